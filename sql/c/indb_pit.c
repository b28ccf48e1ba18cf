/*
 * indb_pit: the point-in-time join's "asof" strategy in C (sql/520-features-read.sql has the SQL around it).
 *
 *   features._pit_asof(entity_sql text, n_pass int, view_sql text[], view_keys int[], key_pos int[],
 *                      view_ttl interval[], cutoff boolean) returns setof record
 *
 * entity_sql returns the entity query's n_pass columns, then the entity row's time as timestamptz, then the
 * views' join key columns (each cast to bigint or text), each once: view i has view_keys[i] keys, whose places
 * among those key columns (1-based) come next in key_pos. view_sql[i] returns the offline rows of view i: its
 * keys (cast the same way), event_ts, written_at, then its features. The result is one row per
 * entity row, in the entity query's order: the n_pass columns, then the features of each view, from the offline
 * row with the latest event_ts at or before the entity row's time (inclusive), within view_ttl[i] when it is not
 * null (event_ts >= time - ttl), and with cutoff only among rows written at or before that time (written_at <=
 * time). NULL keys or a NULL time find nothing. This is exactly what the lateral strategy's index probe returns.
 *
 * How: the entity rows are read once into memory. Then, one view at a time, its offline rows are read by a
 * sequential scan into an array of (hash of the key, key, event_ts, written_at, row) entries and their feature
 * values, the array is sorted by (hash, key, event_ts), and each entity row finds its offline row by binary
 * search. The chosen values are copied out and the view's memory is freed before the next view, so memory is
 * the entity rows, the result and the largest view, never the sum of the views. No sort of the entity rows and
 * no join back by row number: the rows go out in the order they came in.
 *
 * Both queries run through SPI as the caller (this function is SECURITY INVOKER and read-only: row-level
 * security and privileges apply as to any query of the caller's), and arrive through a DestReceiver that keeps
 * the columns it needs, without a tuple copy per row. Every column's type is checked against what the column
 * definition list and this file expect before a value is used.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "tcop/dest.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(indb_pit_asof);

/* one offline row of a view: where its key is, its times, and its row number in the values array */
typedef struct PitEntry
{
	uint64		h;				/* hash of the key bytes */
	uint64		koff;			/* key bytes: arena + koff */
	uint32		klen;
	uint32		row;
	int64		ts;				/* event_ts */
	int64		wr;				/* written_at */
} PitEntry;

static inline int
key_cmp(const char *a, const char *b, uint32 len)
{
	if (len == sizeof(uint64))	/* one bigint key: compared as a word (any consistent order will do) */
	{
		uint64		x,
					y;

		memcpy(&x, a, sizeof(x));
		memcpy(&y, b, sizeof(y));
		return x == y ? 0 : (x < y ? -1 : 1);
	}
	return memcmp(a, b, len);
}

static inline int
pit_cmp(const PitEntry *a, const PitEntry *b, const char *arena)
{
	int			c;

	if (a->h != b->h)
		return a->h < b->h ? -1 : 1;
	if (a->klen != b->klen)
		return a->klen < b->klen ? -1 : 1;
	c = key_cmp(arena + a->koff, arena + b->koff, a->klen);
	if (c != 0)
		return c;
	if (a->ts != b->ts)
		return a->ts < b->ts ? -1 : 1;
	return 0;
}

#define ST_SORT pit_sort
#define ST_ELEMENT_TYPE PitEntry
#define ST_COMPARE(a, b, arg) pit_cmp(a, b, arg)
#define ST_COMPARE_ARG_TYPE const char
#define ST_CHECK_FOR_INTERRUPTS
#define ST_SCOPE static
#define ST_DEFINE
#include "lib/sort_template.h"

/* the entries of one key are contiguous once sorted: an open-addressing table of the groups, by hash */
typedef struct PitGroup
{
	uint64		h;
	uint32		start;
	uint32		count;			/* 0: an empty slot */
} PitGroup;

static inline bool
same_key(const PitEntry *a, const PitEntry *b, const char *arena)
{
	return a->h == b->h && a->klen == b->klen && key_cmp(arena + a->koff, arena + b->koff, a->klen) == 0;
}

static PitGroup *
group_index(MemoryContext cxt, const PitEntry *e, uint64 n, const char *arena, uint64 *mask)
{
	uint64		ngroups = 0,
				size = 16,
				i;
	PitGroup   *t;

	for (i = 0; i < n; i++)
		if (i == 0 || !same_key(&e[i - 1], &e[i], arena))
			ngroups++;
	while (size < 2 * ngroups)
		size *= 2;
	t = MemoryContextAllocHuge(cxt, size * sizeof(PitGroup));
	memset(t, 0, size * sizeof(PitGroup));
	for (i = 0; i < n;)
	{
		uint64		k = i + 1,
					slot;

		while (k < n && same_key(&e[i], &e[k], arena))
			k++;
		for (slot = e[i].h & (size - 1); t[slot].count != 0; slot = (slot + 1) & (size - 1))
			;
		t[slot].h = e[i].h;
		t[slot].start = (uint32) i;
		t[slot].count = (uint32) (k - i);
		i = k;
	}
	*mask = size - 1;
	return t;
}

static inline const PitGroup *
group_find(const PitGroup *t, uint64 mask, const PitEntry *e, const char *arena, uint64 h, const char *key,
		   uint32 klen)
{
	uint64		slot;

	for (slot = h & mask; t[slot].count != 0; slot = (slot + 1) & mask)
	{
		const PitEntry *x = &e[t[slot].start];

		if (t[slot].h == h && x->klen == klen && key_cmp(arena + x->koff, key, klen) == 0)
			return &t[slot];
	}
	return NULL;
}

/* the memory the join may hold: twice indb.features_pit_asof_mb (what auto planned for), checked as rows arrive,
 * so that a view much larger than its statistics said fails with advice instead of growing the backend */
typedef struct PitLimit
{
	Size		cap;
	int			mb;
	MemoryContext cxt[3];
} PitLimit;

static void
check_memory(const PitLimit *lim)
{
	Size		used = 0;
	int			i;

	for (i = 0; i < 3; i++)
		used += MemoryContextMemAllocated(lim->cxt[i], true);
	if (used > lim->cap)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("point-in-time join: the asof strategy needs more than %zu MB of memory here", lim->cap >> 20),
				 errdetail("it may hold twice indb.features_pit_asof_mb (%d MB); the feature view or the entity rows are larger than their statistics said",
						   lim->mb),
				 errhint("SET indb.features_pit_method = 'lvcf' (it spills to disk), or raise indb.features_pit_asof_mb; ANALYZE the offline store")));
}

/* the entity rows: every column of entity_sql, n per row, by-reference values copied into cxt */
typedef struct PitEntities
{
	DestReceiver pub;
	MemoryContext cxt;
	int			natts;
	int			first_key;		/* columns from here on are join keys: bigint or text */
	Oid		   *types;			/* expected type of each column (InvalidOid: a key) */
	int16	   *typlen;
	bool	   *byval;
	Datum	   *vals;
	bool	   *nulls;
	uint64		n;
	uint64		cap;
	const PitLimit *lim;
} PitEntities;

/* the offline rows of one view */
typedef struct PitView
{
	DestReceiver pub;
	MemoryContext cxt;			/* everything of this view (reset after it) */
	MemoryContext tmp;			/* per row (detoasted keys) */
	int			nkeys;
	Oid		   *keytypes;		/* INT8OID or TEXTOID, as the entity side */
	int		   *keycols;		/* the keys' columns in an offline row: 0 .. nkeys - 1 */
	int		   *entcols;		/* the keys' columns in an entity row */
	StringInfoData key;			/* the current row's key bytes */
	uint64		since_reset;	/* rows since tmp was reset */
	TupleDesc	outdesc;		/* the column definition list: this view's features start at feat_off */
	int			feat_off;
	int			nfeat;			/* from the query's own description */
	int16	   *typlen;
	bool	   *byval;
	PitEntry   *e;
	uint64		n;
	uint64		cap;
	char	   *arena;
	uint64		alen;
	uint64		acap;
	Datum	   *vals;			/* n * nfeat */
	bool	   *nulls;
	uint64		vcap;			/* rows the values arrays hold */
	const PitLimit *lim;
} PitView;

/* a value kept after its query ends: by-reference values copied, TOAST pointers fetched */
static inline Datum
keep(Datum d, bool byval, int16 typlen)
{
	if (byval)
		return d;
	if (typlen == -1 && VARATT_IS_EXTERNAL(DatumGetPointer(d)))
		return PointerGetDatum(detoast_external_attr((struct varlena *) DatumGetPointer(d)));
	return datumCopy(d, byval, typlen);
}

static void *
grow(void *p, uint64 *cap, uint64 need, Size elem)
{
	uint64		ncap = *cap;

	if (need <= ncap)
		return p;
	while (ncap < need)
		ncap = ncap < 1024 ? 1024 : ncap * 2;
	p = repalloc_huge(p, ncap * elem);
	*cap = ncap;
	return p;
}

/* row n of a values/nulls pair of arrays (width columns a row, grown together): the slot's columns from first
 * on, kept (keep()) in the current memory context */
static void
store_row(Datum **vals, bool **nulls, uint64 *cap, uint64 n, int width, TupleTableSlot *slot, int first,
		  const bool *byval, const int16 *typlen)
{
	uint64		old_cap = *cap;
	Datum	   *v;
	bool	   *nl;
	int			i;

	*vals = grow(*vals, cap, n + 1, sizeof(Datum) * width);
	if (*cap != old_cap)
		*nulls = repalloc_huge(*nulls, *cap * width * sizeof(bool));
	v = *vals + n * width;
	nl = *nulls + n * width;
	for (i = 0; i < width; i++)
	{
		nl[i] = slot->tts_isnull[first + i];
		v[i] = nl[i] ? (Datum) 0 : keep(slot->tts_values[first + i], byval[i], typlen[i]);
	}
}

static void
dest_noop(DestReceiver *self)
{
}

static void
check_type(TupleDesc desc, int att, Oid want, const char *what)
{
	Oid			got = TupleDescAttr(desc, att)->atttypid;

	if (want != InvalidOid && got != want)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("point-in-time join: %s (column %d) has type %s, expected %s",
						what, att + 1, format_type_be(got), format_type_be(want)),
				 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
}

static void
entities_startup(DestReceiver *self, int operation, TupleDesc desc)
{
	PitEntities *st = (PitEntities *) self;
	int			i;

	if (desc->natts != st->natts)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("point-in-time join: the entity query returns %d columns, expected %d", desc->natts, st->natts),
				 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
	for (i = 0; i < st->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);

		check_type(desc, i, st->types[i], "entity column");
		if (i >= st->first_key && a->atttypid != INT8OID && a->atttypid != TEXTOID)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("point-in-time join: entity key (column %d) has type %s, expected bigint or text",
							i + 1, format_type_be(a->atttypid)),
					 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
		st->types[i] = a->atttypid;
		st->typlen[i] = a->attlen;
		st->byval[i] = a->attbyval;
	}
}

static bool
entities_receive(TupleTableSlot *slot, DestReceiver *self)
{
	PitEntities *st = (PitEntities *) self;
	MemoryContext old = MemoryContextSwitchTo(st->cxt);

	slot_getallattrs(slot);
	store_row(&st->vals, &st->nulls, &st->cap, st->n, st->natts, slot, 0, st->byval, st->typlen);
	st->n++;
	MemoryContextSwitchTo(old);
	if ((st->n & 16383) == 0)
		check_memory(st->lim);
	return true;
}

/* the key bytes of a row's key columns cols[] (of types[]) into buf (bigint: its 8 bytes; text: length, then
 * bytes); false when a key is NULL */
static bool
key_bytes(StringInfo buf, const Datum *v, const bool *nl, const int *cols, const Oid *types, int nkeys)
{
	int			i;

	resetStringInfo(buf);
	for (i = 0; i < nkeys; i++)
	{
		if (nl[cols[i]])
			return false;
		if (types[i] == INT8OID)
		{
			int64		x = DatumGetInt64(v[cols[i]]);

			appendBinaryStringInfo(buf, (const char *) &x, sizeof(x));
		}
		else
		{
			text	   *t = DatumGetTextPP(v[cols[i]]);
			uint32		len = VARSIZE_ANY_EXHDR(t);

			appendBinaryStringInfo(buf, (const char *) &len, sizeof(len));
			appendBinaryStringInfo(buf, VARDATA_ANY(t), len);
		}
	}
	return true;
}

static void
view_startup(DestReceiver *self, int operation, TupleDesc desc)
{
	PitView    *st = (PitView *) self;
	int			i;

	st->nfeat = desc->natts - st->nkeys - 2;
	if (st->nfeat < 0 || st->feat_off + st->nfeat > st->outdesc->natts)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("point-in-time join: a view's offline query returns %d columns, which do not fit its %d keys "
						"and the %d columns left in the column definition list",
						desc->natts, st->nkeys, st->outdesc->natts - st->feat_off),
				 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
	st->typlen = MemoryContextAlloc(st->cxt, sizeof(int16) * Max(st->nfeat, 1));
	st->byval = MemoryContextAlloc(st->cxt, sizeof(bool) * Max(st->nfeat, 1));
	for (i = 0; i < st->nkeys; i++)
		check_type(desc, i, st->keytypes[i], "offline key");
	check_type(desc, st->nkeys, TIMESTAMPTZOID, "offline event_ts");
	check_type(desc, st->nkeys + 1, TIMESTAMPTZOID, "offline written_at");
	for (i = 0; i < st->nfeat; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, st->nkeys + 2 + i);

		check_type(desc, st->nkeys + 2 + i, TupleDescAttr(st->outdesc, st->feat_off + i)->atttypid, "feature");
		st->typlen[i] = a->attlen;
		st->byval[i] = a->attbyval;
	}
}

static bool
view_receive(TupleTableSlot *slot, DestReceiver *self)
{
	PitView    *st = (PitView *) self;
	MemoryContext old;
	StringInfo	buf = &st->key;
	PitEntry   *e;
	int			i;

	slot_getallattrs(slot);
	/* the offline store's primary key makes keys and event_ts NOT NULL, and written_at is NOT NULL: a row
	 * without them (from another query) can match nothing */
	for (i = 0; i < st->nkeys + 2; i++)
		if (slot->tts_isnull[i])
			return true;
	if (st->n >= PG_UINT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("point-in-time join: a feature view has more than %u offline rows", PG_UINT32_MAX),
				 errhint("SET indb.features_pit_method = 'lvcf'")));

	old = MemoryContextSwitchTo(st->tmp);	/* detoasted keys */
	key_bytes(buf, slot->tts_values, slot->tts_isnull, st->keycols, st->keytypes, st->nkeys);

	MemoryContextSwitchTo(st->cxt);
	st->arena = grow(st->arena, &st->acap, st->alen + buf->len, 1);
	memcpy(st->arena + st->alen, buf->data, buf->len);
	st->e = grow(st->e, &st->cap, st->n + 1, sizeof(PitEntry));
	e = &st->e[st->n];
	e->h = hash_bytes_extended((const unsigned char *) buf->data, buf->len, 0);
	e->koff = st->alen;
	e->klen = buf->len;
	e->row = (uint32) st->n;
	e->ts = DatumGetTimestampTz(slot->tts_values[st->nkeys]);
	e->wr = DatumGetTimestampTz(slot->tts_values[st->nkeys + 1]);
	st->alen += buf->len;
	if (st->nfeat > 0)
		store_row(&st->vals, &st->nulls, &st->vcap, st->n, st->nfeat, slot, st->nkeys + 2, st->byval, st->typlen);
	st->n++;
	MemoryContextSwitchTo(old);
	if ((st->n & 16383) == 0)
		check_memory(st->lim);
	if (++st->since_reset >= 1024)
	{
		MemoryContextReset(st->tmp);
		st->since_reset = 0;
	}
	return true;
}

static void
run_query(const char *sql, DestReceiver *dest)
{
	SPIExecuteOptions opts;
	int			rc;

	memset(&opts, 0, sizeof(opts));
	opts.read_only = true;		/* the caller's snapshot, and only a read-only query */
	opts.dest = dest;
	rc = SPI_execute_extended(sql, &opts);
	if (rc < 0)
		elog(ERROR, "point-in-time join: SPI_execute_extended failed: %s", SPI_result_code_string(rc));
}

Datum
indb_pit_asof(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *entity_sql;
	int			n_pass;
	ArrayType  *view_sql_a,
			   *view_keys_a,
			   *key_pos_a,
			   *view_ttl_a;
	Datum	   *view_sql,
			   *view_keys,
			   *key_pos,
			   *view_ttl;
	bool	   *sql_null,
			   *keys_null,
			   *pos_null,
			   *ttl_null;
	int			nviews,
				n_keys_a,
				n_pos,
				n_keycols = 0,
				n_ttl_a;
	bool		cutoff;
	TupleDesc	outdesc;
	int			total_keys = 0,
				total_feat,
				v,
				i;
	MemoryContext fncxt = CurrentMemoryContext;
	MemoryContext ecxt,
				ocxt,
				vcxt,
				tmp;
	PitEntities ent;
	PitLimit	lim;
	Datum	   *outv;
	bool	   *outn;
	int			feat_off;
	int			key_off;			/* this view's first place in key_pos */
	StringInfoData buf;
	PitGroup   *groups;
	uint64		gmask;

	for (i = 0; i < 7; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("point-in-time join: argument %d is null", i + 1),
					 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
	entity_sql = PG_GETARG_TEXT_PP(0);
	n_pass = PG_GETARG_INT32(1);
	view_sql_a = PG_GETARG_ARRAYTYPE_P(2);
	view_keys_a = PG_GETARG_ARRAYTYPE_P(3);
	key_pos_a = PG_GETARG_ARRAYTYPE_P(4);
	view_ttl_a = PG_GETARG_ARRAYTYPE_P(5);
	cutoff = PG_GETARG_BOOL(6);

	deconstruct_array(view_sql_a, TEXTOID, -1, false, TYPALIGN_INT, &view_sql, &sql_null, &nviews);
	deconstruct_array(view_keys_a, INT4OID, 4, true, TYPALIGN_INT, &view_keys, &keys_null, &n_keys_a);
	deconstruct_array(key_pos_a, INT4OID, 4, true, TYPALIGN_INT, &key_pos, &pos_null, &n_pos);
	deconstruct_array(view_ttl_a, INTERVALOID, 16, false, TYPALIGN_DOUBLE, &view_ttl, &ttl_null, &n_ttl_a);
	if (nviews < 1 || nviews > 1000 || n_keys_a != nviews || n_ttl_a != nviews || n_pass < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("point-in-time join: %d view queries, %d key counts, %d ttls and %d entity columns do not fit together",
						nviews, n_keys_a, n_ttl_a, n_pass),
				 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
	for (v = 0; v < nviews; v++)	/* at most 1000 views of 32 keys: no overflow */
	{
		if (sql_null[v] || keys_null[v] || DatumGetInt32(view_keys[v]) < 1 || DatumGetInt32(view_keys[v]) > 32)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("point-in-time join: view %d has no query or a key count outside 1..32", v + 1),
					 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
		total_keys += DatumGetInt32(view_keys[v]);
	}
	/* each key's place among the entity query's key columns, which number the highest place */
	if (n_pos != total_keys)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("point-in-time join: %d key places for %d keys", n_pos, total_keys),
				 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
	for (i = 0; i < n_pos; i++)
	{
		if (pos_null[i] || DatumGetInt32(key_pos[i]) < 1 || DatumGetInt32(key_pos[i]) > total_keys)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("point-in-time join: key place %d is outside 1..%d", i + 1, total_keys),
					 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
		n_keycols = Max(n_keycols, DatumGetInt32(key_pos[i]));
	}

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	outdesc = rsinfo->setDesc;
	total_feat = outdesc->natts - n_pass;
	if (total_feat < 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("point-in-time join: the column definition list has %d columns, fewer than the %d entity columns",
						outdesc->natts, n_pass)));

	ecxt = AllocSetContextCreate(fncxt, "indb pit entities", ALLOCSET_DEFAULT_SIZES);
	ocxt = AllocSetContextCreate(fncxt, "indb pit result", ALLOCSET_DEFAULT_SIZES);
	vcxt = AllocSetContextCreate(fncxt, "indb pit view", ALLOCSET_DEFAULT_SIZES);
	tmp = AllocSetContextCreate(fncxt, "indb pit row", ALLOCSET_SMALL_SIZES);
	{
		const char *mb = GetConfigOption("indb.features_pit_asof_mb", true, false);
		long		x = 1024;

		if (mb != NULL && mb[0] != '\0')
		{
			char	   *end;

			x = strtol(mb, &end, 10);
			if (*end != '\0' || x < 0 || x > 1000000000L)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("indb.features_pit_asof_mb must be a number of megabytes, got %s", mb),
						 errhint("SET indb.features_pit_asof_mb = 1024, or RESET it")));
		}
		lim.mb = (int) x;
		lim.cap = (Size) x * 2 * 1024 * 1024;
		lim.cxt[0] = ecxt;
		lim.cxt[1] = ocxt;
		lim.cxt[2] = vcxt;
	}

	/* the entity rows */
	memset(&ent, 0, sizeof(ent));
	ent.pub.receiveSlot = entities_receive;
	ent.pub.rStartup = entities_startup;
	ent.pub.rShutdown = dest_noop;
	ent.pub.rDestroy = dest_noop;
	ent.pub.mydest = DestNone;
	ent.cxt = ecxt;
	ent.natts = n_pass + 1 + n_keycols;
	ent.first_key = n_pass + 1;
	ent.lim = &lim;
	ent.types = MemoryContextAllocZero(ecxt, sizeof(Oid) * ent.natts);
	ent.typlen = MemoryContextAllocZero(ecxt, sizeof(int16) * ent.natts);
	ent.byval = MemoryContextAllocZero(ecxt, sizeof(bool) * ent.natts);
	for (i = 0; i < n_pass; i++)
		ent.types[i] = TupleDescAttr(outdesc, i)->atttypid;
	ent.types[n_pass] = TIMESTAMPTZOID;	/* the key columns after it: bigint or text (entities_startup) */
	ent.vals = MemoryContextAllocHuge(ecxt, sizeof(Datum));
	ent.nulls = MemoryContextAllocHuge(ecxt, sizeof(bool));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "point-in-time join: SPI_connect failed");
	run_query(text_to_cstring(entity_sql), (DestReceiver *) &ent);

	outv = MemoryContextAllocHuge(ocxt, sizeof(Datum) * Max(ent.n * total_feat, 1));
	outn = MemoryContextAllocHuge(ocxt, sizeof(bool) * Max(ent.n * total_feat, 1));
	memset(outn, true, sizeof(bool) * ent.n * total_feat);
	check_memory(&lim);

	initStringInfo(&buf);
	feat_off = 0;
	key_off = 0;
	for (v = 0; v < nviews; v++)
	{
		PitView		st;
		int			nkeys = DatumGetInt32(view_keys[v]);
		Interval   *ttl = ttl_null[v] ? NULL : DatumGetIntervalP(view_ttl[v]);
		uint64		r;

		memset(&st, 0, sizeof(st));
		st.pub.receiveSlot = view_receive;
		st.pub.rStartup = view_startup;
		st.pub.rShutdown = dest_noop;
		st.pub.rDestroy = dest_noop;
		st.pub.mydest = DestNone;
		st.cxt = vcxt;
		st.tmp = tmp;
		st.lim = &lim;
		st.nkeys = nkeys;
		st.keytypes = MemoryContextAlloc(vcxt, sizeof(Oid) * nkeys);
		st.keycols = MemoryContextAlloc(vcxt, sizeof(int) * nkeys);
		st.entcols = MemoryContextAlloc(vcxt, sizeof(int) * nkeys);
		for (i = 0; i < nkeys; i++)
		{
			st.keycols[i] = i;
			st.entcols[i] = ent.first_key + DatumGetInt32(key_pos[key_off + i]) - 1;
			st.keytypes[i] = ent.types[st.entcols[i]];
		}
		/* this view's features: the column definition list's next columns, as many as its query returns */
		st.outdesc = outdesc;
		st.feat_off = n_pass + feat_off;
		{
			MemoryContext old = MemoryContextSwitchTo(vcxt);

			initStringInfo(&st.key);
			MemoryContextSwitchTo(old);
		}
		st.e = MemoryContextAllocHuge(vcxt, sizeof(PitEntry));
		st.arena = MemoryContextAllocHuge(vcxt, 1);
		st.vals = MemoryContextAllocHuge(vcxt, sizeof(Datum));
		st.nulls = MemoryContextAllocHuge(vcxt, sizeof(bool));
		run_query(TextDatumGetCString(view_sql[v]), (DestReceiver *) &st);
		pit_sort(st.e, st.n, st.arena);
		groups = group_index(vcxt, st.e, st.n, st.arena, &gmask);
		check_memory(&lim);

		for (r = 0; r < ent.n; r++)
		{
			Datum	   *ev = ent.vals + r * ent.natts;
			bool	   *en = ent.nulls + r * ent.natts;
			TimestampTz t;
			TimestampTz lo = 0;
			const PitGroup *g;
			uint64		a,
						b;
			int64		j;

			if ((r & 4095) == 0)
				CHECK_FOR_INTERRUPTS();
			if (en[n_pass])
				continue;
			t = DatumGetTimestampTz(ev[n_pass]);
			if ((r & 1023) == 0)
				MemoryContextReset(tmp);
			{
				MemoryContext old = MemoryContextSwitchTo(tmp);	/* detoasted keys */
				bool		have = key_bytes(&buf, ev, en, st.entcols, st.keytypes, nkeys);

				MemoryContextSwitchTo(old);
				if (!have)
					continue;
			}
			/* the key's group of entries, then the last entry at or before t within it */
			g = group_find(groups, gmask, st.e, st.arena,
						   hash_bytes_extended((const unsigned char *) buf.data, buf.len, 0), buf.data, buf.len);
			if (g == NULL)
				continue;
			a = g->start;
			b = g->start + g->count;
			while (a < b)
			{
				uint64		m = a + (b - a) / 2;

				if (st.e[m].ts <= t)
					a = m + 1;
				else
					b = m;
			}
			if (a == g->start)
				continue;		/* every event of the key is after t */
			j = (int64) a - 1;	/* entries before g->start are another key's */
			if (ttl != NULL)
				lo = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
															 TimestampTzGetDatum(t), IntervalPGetDatum(ttl)));
			if (cutoff)
			{
				/* the latest event among the rows written by then; rows are in event order within the key */
				while (j >= (int64) g->start && st.e[j].wr > t && (ttl == NULL || st.e[j].ts >= lo))
					j--;
				if (j < (int64) g->start || st.e[j].wr > t)
					continue;
			}
			if (ttl != NULL && st.e[j].ts < lo)
				continue;
			{
				uint32		row = st.e[j].row;
				Datum	   *src = st.vals + (uint64) row * st.nfeat;
				bool	   *srcn = st.nulls + (uint64) row * st.nfeat;
				Datum	   *dst = outv + r * total_feat + feat_off;
				bool	   *dstn = outn + r * total_feat + feat_off;
				MemoryContext old = MemoryContextSwitchTo(ocxt);

				for (i = 0; i < st.nfeat; i++)
				{
					dstn[i] = srcn[i];
					dst[i] = srcn[i] ? (Datum) 0 : keep(src[i], st.byval[i], st.typlen[i]);
				}
				MemoryContextSwitchTo(old);
			}
		}
		feat_off += st.nfeat;
		key_off += nkeys;
		MemoryContextReset(vcxt);
	}
	if (feat_off != total_feat)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("point-in-time join: the views return %d features, the column definition list has %d",
						feat_off, total_feat),
				 errhint("run the SQL that features.historical_query returns for this request, unchanged")));
	SPI_finish();

	/* out, in the entity query's order */
	{
		Datum	   *vals = palloc(sizeof(Datum) * Max(outdesc->natts, 1));
		bool	   *nulls = palloc(sizeof(bool) * Max(outdesc->natts, 1));
		uint64		r;

		for (r = 0; r < ent.n; r++)
		{
			if ((r & 4095) == 0)
				CHECK_FOR_INTERRUPTS();
			memcpy(vals, ent.vals + r * ent.natts, sizeof(Datum) * n_pass);
			memcpy(nulls, ent.nulls + r * ent.natts, sizeof(bool) * n_pass);
			memcpy(vals + n_pass, outv + r * total_feat, sizeof(Datum) * total_feat);
			memcpy(nulls + n_pass, outn + r * total_feat, sizeof(bool) * total_feat);
			tuplestore_putvalues(rsinfo->setResult, outdesc, vals, nulls);
		}
	}
	MemoryContextDelete(ecxt);
	MemoryContextDelete(ocxt);
	MemoryContextDelete(vcxt);
	MemoryContextDelete(tmp);
	return (Datum) 0;
}
