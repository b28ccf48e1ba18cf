#!/bin/sh
# Healthy: the entrypoint has installed indb and started the server for clients (it writes the marker only
# then, and removes it when a stop begins), and the server accepts connections.
test -f /var/run/postgresql/indb.ready \
  && exec pg_isready -q -h /var/run/postgresql -p "${INDB_PORT:-5432}" -d "${INDB_DB:-indb}" -U postgres
exit 1
