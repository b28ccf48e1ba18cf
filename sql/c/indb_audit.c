/*
 * indb_audit: the append path of the audit log in C (sql/800-audit-int.sql has the design and the SQL around it).
 *
 *   audit._append(action, object, row_key, old_values, new_values, tenant, acting_role) returns bigint
 *   audit._row_trigger()    AFTER INSERT/UPDATE/DELETE FOR EACH ROW; TG_ARGV[0] = comma-separated primary key
 *                           columns, TG_ARGV[1..] = the bytea columns (recorded as "sha256:<hex>")
 *   audit._batch_trigger()  AFTER INSERT FOR EACH STATEMENT REFERENCING NEW TABLE AS new_rows, on history tables;
 *                           TG_ARGV[0] = the column summarized as "keys"
 *
 * What an event is, how its content hash is made and how it joins its lane is unchanged: every event is still
 * written by ONE SQL statement (the lane's row moved to the event, the event inserted, audit._content_hash over
 * both), kept here as a saved plan. What C removes is the per-transaction and per-call set-up of PL/pgSQL around
 * that statement (its expressions, the settings that carried the held lane, the second function call), which
 * measured ~45% of an event's instructions.
 *
 * The lane a transaction holds is kept in this backend's memory (it was two custom settings, which any session
 * could SET): the lane, the transaction it belongs to and the place of its row's newest version. A subtransaction
 * that aborts takes back its lane moves and its advisory lock: the place is then forgotten and the next event
 * claims its lane again (the same one, where the lock is still held). The memory is a shortcut, never trusted: a
 * place that is not the row's newest visible version makes the update find nothing, and the lane is claimed again.
 *
 * Both functions are SECURITY DEFINER with search_path = pg_catalog, pg_temp (set in their CREATE FUNCTION), so
 * the statements below are planned and run as the owner of the audit log, with that path.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/makefuncs.h"
#include "storage/itemptr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

PG_MODULE_MAGIC;

/* the advisory-lock class of lanes: audit._lane_lock() (hashtext('indb audit lane')) */
#define LANE_LOCK_CLASS 182285636

/* one statement per event: move the lane's row to the event and insert the event ($11 tid: by place, else
 * by lane number); returns the place of the row's new version */
#define APPEND_SQL(WHERE)                                                                                        \
	"with l as ("                                                                                                \
	"  update audit.lanes l"                                                                                     \
	"     set pos = l.pos + 1, last_id = $1, prev_hash = l.last_hash,"                                           \
	"         last_hash = audit._content_hash($1, $2, $3, $4, $5, $6, $7, session_user::text,"                   \
	"                                         coalesce($9, audit._acting_role()),"                                \
	"                                         current_setting('application_name', true), inet_client_addr(),"     \
	"                                         txid_current(), $8, l.lane, l.pos + 1, l.last_hash)"                \
	"   where " WHERE                                                                                            \
	"  returning l.ctid, l.lane, l.pos, l.prev_hash, l.last_hash),"                                              \
	" e as ("                                                                                                    \
	"  insert into audit.events(id, ts, action, object, row_key, old_values, new_values, session_user_name,"     \
	"                           current_user_name, application_name, client_addr, txid, tenant, hash, lane,"     \
	"                           lane_pos, lane_prev)"                                                            \
	"  select $1, $2, $3, $4, $5, $6, $7, session_user::text, coalesce($9, audit._acting_role()),"                \
	"         current_setting('application_name', true), inet_client_addr(), txid_current(), $8, l.last_hash,"   \
	"         l.lane, l.pos, l.prev_hash"                                                                        \
	"    from l)"                                                                                                \
	" select l.ctid from l"

#define NPARAMS 11
static Oid	param_types[NPARAMS] = {INT8OID, TIMESTAMPTZOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, JSONBOID,
	TEXTOID, TEXTOID, INT4OID, TIDOID};

static SPIPlanPtr plan_by_place = NULL;
static SPIPlanPtr plan_by_lane = NULL;

/* the lane this backend's transaction holds */
static LocalTransactionId held_lxid = InvalidLocalTransactionId;
static int32 held_lane = 0;
static ItemPointerData held_place;

/* the lane this session used last (tried first at a transaction's first event) */
static int32 pref_lane = 0;

static FmgrInfo to_jsonb_finfo;
static bool to_jsonb_ready = false;

PG_FUNCTION_INFO_V1(indb_audit_append);
PG_FUNCTION_INFO_V1(indb_audit_row_trigger);
PG_FUNCTION_INFO_V1(indb_audit_batch_trigger);

static void
forget_lane_on_subabort(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		held_lxid = InvalidLocalTransactionId;
}

void		_PG_init(void);

void
_PG_init(void)
{
	RegisterSubXactCallback(forget_lane_on_subabort, NULL);
}

static SPIPlanPtr
saved_plan(SPIPlanPtr *slot, const char *sql)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, NPARAMS, param_types);

		if (p == NULL)
			elog(ERROR, "audit: could not prepare the append statement: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(p) != 0)
			elog(ERROR, "audit: could not keep the append statement");
		*slot = p;
	}
	return *slot;
}

static bool
try_lane_lock(int32 lane)
{
	return DatumGetBool(DirectFunctionCall2(pg_try_advisory_xact_lock_int4, Int32GetDatum(LANE_LOCK_CLASS),
											Int32GetDatum(lane)));
}

/*
 * Run the append statement on the lane's row: by its place `at` where given (plan_by_place), else by the lane's
 * key (plan_by_lane). True, and the row's new place, when the row was there to move.
 */
static bool
run_append(Datum *values, char *nulls, int32 lane, ItemPointer at, ItemPointer place)
{
	bool		isnull;
	int			rc;

	values[9] = Int32GetDatum(lane);
	values[10] = PointerGetDatum(at);
	nulls[10] = at ? ' ' : 'n';
	rc = SPI_execute_plan(at ? plan_by_place : plan_by_lane, values, nulls, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "audit: the append statement failed: %s", SPI_result_code_string(rc));
	if (SPI_processed != 1)
		return false;
	*place = *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return true;
}

/* what an event is made of, in the order of audit._append's arguments */
enum
{
	EV_ACTION, EV_OBJECT, EV_ROW_KEY, EV_OLD, EV_NEW, EV_TENANT, EV_ACTING, EV_FIELDS
};

/*
 * Append one event (its fields, EV_FIELDS of them, and their null flags); its id. Never waits for another
 * transaction: the lane is claimed with advisory try-locks (the lane held, this session's last lane, any free
 * lane, else a new one). Connects to SPI itself (nested, where the caller is connected).
 */
static int64
append_event(const Datum *ev, const bool *ev_null)
{
	Oid			seq;
	int64		nid;
	Datum		values[NPARAMS];
	char		nulls[NPARAMS + 1];
	ItemPointerData place;
	int32		lane;
	bool		done = false;

	seq = get_relname_relid("events_id_seq", get_namespace_oid("audit", false));
	if (!OidIsValid(seq))
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("audit: sequence audit.events_id_seq is missing"),
						errhint("Run indb install.")));
	nid = nextval_internal(seq, false);

	/* $1 id, $2 time, $3..$9 the event's fields, $10 lane and $11 place (run_append) */
	nulls[NPARAMS] = '\0';
	values[0] = Int64GetDatum(nid);
	nulls[0] = ' ';
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	nulls[1] = ' ';
	for (int f = 0; f < EV_FIELDS; f++)
	{
		values[2 + f] = ev_null[f] ? (Datum) 0 : ev[f];
		nulls[2 + f] = ev_null[f] ? 'n' : ' ';
	}

	SPI_connect();
	saved_plan(&plan_by_place, APPEND_SQL("l.ctid = $11 and l.lane = $10"));
	saved_plan(&plan_by_lane, APPEND_SQL("l.lane = $10"));

	/* the lane this transaction holds: its row's newest version is where the last event left it */
	if (held_lxid == MyProc->lxid && try_lane_lock(held_lane))
	{
		lane = held_lane;
		done = run_append(values, nulls, lane, &held_place, &place);
	}
	/* this session's last lane, then any lane no other transaction holds, then a new lane */
	for (int attempt = 1; !done && attempt <= 3; attempt++)
	{
		lane = 0;
		if (attempt == 1)
		{
			if (pref_lane <= 0 || !try_lane_lock(pref_lane))
				continue;
			lane = pref_lane;
		}
		else if (attempt == 2)
		{
			bool		isnull;
			int			rc = SPI_execute("select l.lane from audit.lanes l "
										 "where pg_catalog.pg_try_advisory_xact_lock(" CppAsString2(LANE_LOCK_CLASS)
										 ", l.lane) limit 1",
										 false, 1);

			if (rc != SPI_OK_SELECT)
				elog(ERROR, "audit: could not look for a free lane: %s", SPI_result_code_string(rc));
			if (SPI_processed != 1)
				continue;
			lane = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		}
		else
		{
			bool		isnull;
			int			rc = SPI_execute("insert into audit.lanes default values returning lane", false, 1);

			if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
				elog(ERROR, "audit: could not make a lane: %s", SPI_result_code_string(rc));
			lane = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
			(void) try_lane_lock(lane);
		}
		done = run_append(values, nulls, lane, NULL, &place);
	}
	SPI_finish();
	if (!done)
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
						errmsg("audit: could not append event " INT64_FORMAT " to a lane", nid)));
	held_lxid = MyProc->lxid;
	held_lane = lane;
	held_place = place;
	pref_lane = lane;
	return nid;
}

Datum
indb_audit_append(PG_FUNCTION_ARGS)
{
	Datum		ev[EV_FIELDS];
	bool		ev_null[EV_FIELDS];

	if (PG_ARGISNULL(EV_ACTION) || PG_ARGISNULL(EV_OBJECT))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("audit: an event needs an action and an object")));
	for (int f = 0; f < EV_FIELDS; f++)
	{
		ev_null[f] = f >= PG_NARGS() || PG_ARGISNULL(f);
		ev[f] = ev_null[f] ? (Datum) 0 : PG_GETARG_DATUM(f);
	}
	PG_RETURN_INT64(append_event(ev, ev_null));
}

/* to_jsonb(record): the same conversion as SQL's to_jsonb(old) */
static Jsonb *
row_jsonb(HeapTuple tuple, TupleDesc desc)
{
	if (!to_jsonb_ready)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		FuncExpr   *expr;

		fmgr_info_cxt(F_TO_JSONB, &to_jsonb_finfo, TopMemoryContext);
		expr = makeFuncExpr(F_TO_JSONB, JSONBOID, list_make1(makeNullConst(RECORDOID, -1, InvalidOid)),
							InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		fmgr_info_set_expr((Node *) expr, &to_jsonb_finfo);
		MemoryContextSwitchTo(old);
		to_jsonb_ready = true;
	}
	return DatumGetJsonbP(FunctionCall1(&to_jsonb_finfo, heap_copy_tuple_as_datum(tuple, desc)));
}

static void
push_key(JsonbParseState **st, const char *key, int len)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = len;
	pushJsonbValue(st, WJB_KEY, &k);
}

static void
push_value(JsonbParseState **st, JsonbValue *v)
{
	JsonbValue	null;

	if (v == NULL)
	{
		null.type = jbvNull;
		v = &null;
	}
	pushJsonbValue(st, WJB_VALUE, v);
}

/* "sha256:<hex>" of a bytea value, as a JSON string (NULL: JSON null) */
static void
push_sha256(JsonbParseState **st, Datum bytes, bool isnull)
{
	JsonbValue	v;

	if (isnull)
		v.type = jbvNull;
	else
	{
		bytea	   *h = DatumGetByteaPP(DirectFunctionCall1(sha256_bytea, bytes));
		char	   *s = palloc(7 + 2 * VARSIZE_ANY_EXHDR(h) + 1);

		memcpy(s, "sha256:", 7);
		hex_encode(VARDATA_ANY(h), VARSIZE_ANY_EXHDR(h), s + 7);
		v.type = jbvString;
		v.val.string.val = s;
		v.val.string.len = 7 + 2 * VARSIZE_ANY_EXHDR(h);
	}
	pushJsonbValue(st, WJB_VALUE, &v);
}

static bool
jsonb_values_differ(JsonbValue *a, JsonbValue *b)
{
	if (a == NULL || b == NULL)
		return a != b;
	return compareJsonbContainers(&JsonbValueToJsonb(a)->root, &JsonbValueToJsonb(b)->root) != 0;
}

static bool
bytes_differ(Datum a, bool anull, Datum b, bool bnull)
{
	if (anull || bnull)
		return anull != bnull;
	/* the same stored value (an UPDATE that did not touch the column keeps its TOAST pointer): equal, unread */
	if (datumIsEqual(a, b, false, -1))
		return false;
	return !DatumGetBool(DirectFunctionCall2(byteaeq, a, b));
}

/*
 * The row as jsonb, its bytea columns null (nulled before the conversion, so a large value is never turned into
 * a JSON string; with_sha256 then puts their hashes in).
 */
static Jsonb *
row_without_bytes(HeapTuple tuple, TupleDesc desc, int nbytes, int *byte_cols)
{
	Datum	   *values;
	bool	   *isnull;
	HeapTuple	t;
	Jsonb	   *j;

	if (nbytes == 0)
		return row_jsonb(tuple, desc);
	values = palloc0(sizeof(Datum) * nbytes);
	isnull = palloc(sizeof(bool) * nbytes);
	for (int i = 0; i < nbytes; i++)
		isnull[i] = true;
	t = heap_modify_tuple_by_cols(tuple, desc, nbytes, byte_cols, values, isnull);
	j = row_jsonb(t, desc);
	heap_freetuple(t);
	return j;
}

/*
 * obj with the "sha256:<hex>" entries pushed in `sha` (an open object) put in place of its null bytea columns. A
 * column with no entry (an UPDATE that did not change the bytes) stays null on both sides, and the UPDATE's diff
 * drops it; INSERT and DELETE have an entry for every bytea column.
 */
static Jsonb *
with_sha256(Jsonb *obj, JsonbParseState **sha)
{
	Jsonb	   *entries = JsonbValueToJsonb(pushJsonbValue(sha, WJB_END_OBJECT, NULL));

	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(obj), JsonbPGetDatum(entries)));
}

/* "<schema>.<table>", the event's object */
static Datum
relation_object(Relation rel)
{
	return CStringGetTextDatum(psprintf("%s.%s", get_namespace_name(RelationGetNamespace(rel)),
										RelationGetRelationName(rel)));
}

Datum
indb_audit_row_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Trigger    *tg;
	TupleDesc	desc;
	HeapTuple	oldt = NULL,
				newt = NULL;
	Jsonb	   *o = NULL,
			   *n = NULL,
			   *src,
			   *k = NULL;
	int			nbytes;
	int		   *byte_cols = NULL;
	const char *op;
	JsonbValue *tv;
	Datum		tenant = (Datum) 0;
	bool		tenant_null = true;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("audit._row_trigger() must be an AFTER ... FOR EACH ROW trigger (audit.attach makes it)")));
	tg = td->tg_trigger;
	if (tg->tgnargs < 1)
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("audit._row_trigger() needs its primary key columns as the first argument")));
	desc = RelationGetDescr(td->tg_relation);
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		op = "INSERT";
		newt = td->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		op = "UPDATE";
		oldt = td->tg_trigtuple;
		newt = td->tg_newtuple;
	}
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		op = "DELETE";
		oldt = td->tg_trigtuple;
	}
	else
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("audit._row_trigger() fires on INSERT, UPDATE or DELETE")));

	/* the bytea columns named in TG_ARGV[1..] */
	nbytes = tg->tgnargs - 1;
	if (nbytes > 0)
	{
		byte_cols = palloc(sizeof(int) * nbytes);
		for (int i = 0; i < nbytes; i++)
		{
			byte_cols[i] = SPI_fnumber(desc, tg->tgargs[i + 1]);
			if (byte_cols[i] <= 0 || TupleDescAttr(desc, byte_cols[i] - 1)->atttypid != BYTEAOID)
				ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
								errmsg("audit: %s has no bytea column \"%s\"", RelationGetRelationName(td->tg_relation),
									   tg->tgargs[i + 1]),
								errhint("Attach the audit again: SELECT audit.attach('%s').",
										RelationGetRelationName(td->tg_relation))));
		}
	}
	if (oldt)
		o = row_without_bytes(oldt, desc, nbytes, byte_cols);
	if (newt)
		n = row_without_bytes(newt, desc, nbytes, byte_cols);
	if (nbytes > 0)
	{
		/* bytes are recorded as their sha256; an UPDATE hashes them only when they changed */
		JsonbParseState *os = NULL,
				   *ns = NULL;

		pushJsonbValue(&os, WJB_BEGIN_OBJECT, NULL);
		pushJsonbValue(&ns, WJB_BEGIN_OBJECT, NULL);
		for (int i = 0; i < nbytes; i++)
		{
			const char *name = tg->tgargs[i + 1];
			bool		onull = true,
						nnull = true;
			Datum		ov = (Datum) 0,
						nv = (Datum) 0;

			if (oldt)
				ov = heap_getattr(oldt, byte_cols[i], desc, &onull);
			if (newt)
				nv = heap_getattr(newt, byte_cols[i], desc, &nnull);
			if (oldt && newt && !bytes_differ(ov, onull, nv, nnull))
				continue;
			if (oldt)
			{
				push_key(&os, name, strlen(name));
				push_sha256(&os, ov, onull);
			}
			if (newt)
			{
				push_key(&ns, name, strlen(name));
				push_sha256(&ns, nv, nnull);
			}
		}
		if (o)
			o = with_sha256(o, &os);
		if (n)
			n = with_sha256(n, &ns);
	}
	src = n ? n : o;

	/* the primary key's values */
	{
		char	   *cols = pstrdup(tg->tgargs[0]);
		char	   *save = NULL;
		JsonbParseState *ks = NULL;
		int			nk = 0;

		pushJsonbValue(&ks, WJB_BEGIN_OBJECT, NULL);
		for (char *c = strtok_r(cols, ",", &save); c != NULL; c = strtok_r(NULL, ",", &save))
		{
			push_key(&ks, c, strlen(c));
			push_value(&ks, getKeyJsonValueFromContainer(&src->root, c, strlen(c), NULL));
			nk++;
		}
		if (nk > 0)
			k = JsonbValueToJsonb(pushJsonbValue(&ks, WJB_END_OBJECT, NULL));
	}
	tv = getKeyJsonValueFromContainer(&src->root, "tenant", 6, NULL);
	if (tv != NULL && tv->type != jbvNull)
	{
		tenant_null = false;
		if (tv->type == jbvString)
			tenant = PointerGetDatum(cstring_to_text_with_len(tv->val.string.val, tv->val.string.len));
		else
			tenant = PointerGetDatum(cstring_to_text(JsonbToCString(NULL, &JsonbValueToJsonb(tv)->root, 0)));
	}

	if (oldt && newt)
	{
		/* only what changed; nothing but updated_at: no event */
		JsonbIterator *it = JsonbIteratorInit(&o->root);
		JsonbIteratorToken r;
		JsonbValue	key,
					val;
		JsonbParseState *os = NULL,
				   *ns = NULL;
		int			changed = 0;
		bool		only_updated_at = true;

		pushJsonbValue(&os, WJB_BEGIN_OBJECT, NULL);
		pushJsonbValue(&ns, WJB_BEGIN_OBJECT, NULL);
		while ((r = JsonbIteratorNext(&it, &key, true)) != WJB_DONE)
		{
			JsonbValue *nv;

			if (r != WJB_KEY)
				continue;
			r = JsonbIteratorNext(&it, &val, true);
			Assert(r == WJB_VALUE);
			nv = getKeyJsonValueFromContainer(&n->root, key.val.string.val, key.val.string.len, NULL);
			if (!jsonb_values_differ(&val, nv))
				continue;
			changed++;
			if (!(key.val.string.len == 10 && memcmp(key.val.string.val, "updated_at", 10) == 0))
				only_updated_at = false;
			pushJsonbValue(&os, WJB_KEY, &key);
			pushJsonbValue(&os, WJB_VALUE, &val);
			pushJsonbValue(&ns, WJB_KEY, &key);
			push_value(&ns, nv);
		}
		if (changed == 0 || only_updated_at)
			return PointerGetDatum(NULL);
		o = JsonbValueToJsonb(pushJsonbValue(&os, WJB_END_OBJECT, NULL));
		n = JsonbValueToJsonb(pushJsonbValue(&ns, WJB_END_OBJECT, NULL));
	}

	{
		Datum		ev[EV_FIELDS] = {CStringGetTextDatum(op), relation_object(td->tg_relation), PointerGetDatum(k),
		PointerGetDatum(o), PointerGetDatum(n), tenant, (Datum) 0};
		bool		ev_null[EV_FIELDS] = {false, false, k == NULL, o == NULL, n == NULL, tenant_null, true};

		(void) append_event(ev, ev_null);
	}
	return PointerGetDatum(NULL);
}

/*
 * History tables: one summary event per INSERT statement (rows, runs, keys, and the sha256 of the rows' text form,
 * one line per row in the order the statement inserted them). The query is planned once per table (the
 * transition table's columns are the table's) and kept.
 */
#define BATCH_PLANS 16
static struct
{
	Oid			relid;
	char		keycol[NAMEDATALEN];
	SPIPlanPtr	plan;
}			batch_plans[BATCH_PLANS];

Datum
indb_audit_batch_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Oid			relid;
	const char *keycol;
	SPIPlanPtr	plan = NULL;
	int			slot = -1;
	int			rc;
	bool		isnull;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(td->tg_event) || td->tg_newtable == NULL || td->tg_trigger->tgnargs != 1)
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("audit._batch_trigger() must be an AFTER INSERT ... REFERENCING NEW TABLE AS new_rows "
							   "FOR EACH STATEMENT trigger with one argument (audit.attach makes it)")));
	relid = RelationGetRelid(td->tg_relation);
	keycol = td->tg_trigger->tgargs[0];
	if (SPI_fnumber(RelationGetDescr(td->tg_relation), keycol) <= 0)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
						errmsg("audit: %s has no column \"%s\" to summarize", RelationGetRelationName(td->tg_relation),
							   keycol),
						errhint("Attach the audit again: SELECT audit.attach('%s', 'history').",
								RelationGetRelationName(td->tg_relation))));
	for (int i = 0; i < BATCH_PLANS; i++)
	{
		if (batch_plans[i].relid == relid && strcmp(batch_plans[i].keycol, keycol) == 0)
		{
			plan = batch_plans[i].plan;
			break;
		}
		if (slot < 0 && batch_plans[i].relid == InvalidOid)
			slot = i;
	}
	SPI_connect();
	if (SPI_register_trigger_data(td) != SPI_OK_TD_REGISTER)
		elog(ERROR, "audit: could not register the transition table");
	if (plan == NULL)
	{
		char	   *sql = psprintf("select jsonb_build_object('rows', count(*), 'run_ids', jsonb_agg(distinct r.run_id), "
								   "'keys', jsonb_agg(distinct r.%s), "
								   "'sha256', encode(sha256(convert_to(string_agg(r::text, E'\\n'), 'UTF8')), 'hex')), "
								   "min(r.tenant), count(*) from %s r",
								   quote_identifier(keycol), quote_identifier(td->tg_trigger->tgnewtable));

		plan = SPI_prepare(sql, 0, NULL);
		if (plan == NULL)
			elog(ERROR, "audit: could not prepare the batch summary: %s", SPI_result_code_string(SPI_result));
		if (slot >= 0 && SPI_keepplan(plan) == 0)
		{
			batch_plans[slot].relid = relid;
			strlcpy(batch_plans[slot].keycol, keycol, NAMEDATALEN);
			batch_plans[slot].plan = plan;
		}
	}
	rc = SPI_execute_plan(plan, NULL, NULL, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "audit: the batch summary failed: %s", SPI_result_code_string(rc));
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)) > 0)
	{
		Datum		ev[EV_FIELDS] = {CStringGetTextDatum("INSERT_BATCH"), relation_object(td->tg_relation), (Datum) 0,
		(Datum) 0, SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull), (Datum) 0, (Datum) 0};
		bool		ev_null[EV_FIELDS] = {false, false, true, true, false, true, true};

		ev[EV_TENANT] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &ev_null[EV_TENANT]);
		(void) append_event(ev, ev_null);
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}
