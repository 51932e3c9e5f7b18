/**
 * The fleet server's databases for tests that run against each store: a SQLite file, or a fresh
 * database in a throwaway PostgreSQL cluster (test/helpers/postgres.ts).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostgres, type PostgresCluster } from './postgres.js';

export type FleetBackend = 'sqlite' | 'postgres';
export const FLEET_BACKENDS: FleetBackend[] = ['sqlite', 'postgres'];

export interface FleetDatabase {
  /** What `edgekit serve --db` takes. */
  db: string;
  /** Where the first admin token goes (--admin-token-file). */
  adminTokenFile: string;
  /** A folder for the test's other files. */
  dir: string;
  /** The cluster, for PostgreSQL. */
  cluster: PostgresCluster | null;
  close(): Promise<void>;
}

export async function fleetDatabase(backend: FleetBackend): Promise<FleetDatabase> {
  const dir = mkdtempSync(join(tmpdir(), `fleet-${backend}-`));
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  if (backend === 'sqlite') {
    return { db: join(dir, 'fleet.db'), adminTokenFile: join(dir, 'admin-token'), dir, cluster: null, close: async () => cleanup() };
  }
  let cluster: PostgresCluster;
  try {
    cluster = await startPostgres();
  } catch (err) {
    cleanup();
    throw err;
  }
  const db = await cluster.createDatabase('fleet');
  return {
    db, adminTokenFile: join(dir, 'admin-token'), dir, cluster,
    close: async () => {
      await cluster.stop();
      cleanup();
    },
  };
}
