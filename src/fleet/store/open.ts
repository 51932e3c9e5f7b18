/**
 * `--db` -> a store: a SQLite file path (or `sqlite:<path>`) for one server, or a `postgres://` URL
 * for one or more servers sharing a database. Each driver is loaded only when used.
 */
import { EdgekitError } from '../../util/errors.js';
import type { FleetStore } from './store.js';

export interface OpenedStore {
  store: FleetStore;
  kind: 'sqlite' | 'postgres';
  /** The database as it may be shown (no password). */
  where: string;
  /** Where the first admin token is written unless told otherwise. */
  defaultAdminTokenFile: string;
}

export type DatabaseTarget = { kind: 'sqlite'; file: string } | { kind: 'postgres'; url: string };

export function parseDatabaseTarget(db: string): DatabaseTarget {
  if (/^postgres(ql)?:\/\//i.test(db)) return { kind: 'postgres', url: db };
  if (/^sqlite:/i.test(db)) {
    const file = db.slice('sqlite:'.length).replace(/^\/\//, '');
    if (!file) throw new EdgekitError(`--db: ${db} names no file (sqlite:<path>, e.g. sqlite:/var/lib/edgekit/fleet.db)`);
    return { kind: 'sqlite', file };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(db)) {
    throw new EdgekitError(`--db: ${db.replace(/:[^:@/]*@/, ':***@')}: not a database this server knows (a SQLite file path, sqlite:<path> or postgres://...)`);
  }
  if (!db) throw new EdgekitError('--db: empty (a SQLite file path, sqlite:<path> or postgres://...)');
  return { kind: 'sqlite', file: db };
}

export async function openFleetStore(db: string, o: { log?: (line: string) => void } = {}): Promise<OpenedStore> {
  const target = parseDatabaseTarget(db);
  if (target.kind === 'postgres') {
    const { openPostgresStore, redactUrl } = await import('./postgres.js');
    return { store: openPostgresStore(target.url, o), kind: 'postgres', where: redactUrl(target.url), defaultAdminTokenFile: 'fleet.admin-token' };
  }
  const { openSqliteStore } = await import('./sqlite.js');
  return { store: openSqliteStore(target.file), kind: 'sqlite', where: target.file, defaultAdminTokenFile: `${target.file}.admin-token` };
}
