/**
 * A throwaway PostgreSQL cluster for tests: Debian's server binaries (/usr/lib/postgresql/<v>/bin),
 * a new data folder in a temp dir, listening on 127.0.0.1 on a free port with a random password,
 * stopped and deleted afterwards. PostgreSQL refuses to run as root, so as root it runs as the
 * `postgres` user the Debian package creates. Missing binaries are an error, never a skip: the tests
 * that need this must not pass by not running.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const run = promisify(execFile);

export interface PostgresCluster {
  port: number;
  /** A connection URL for database `db` as the superuser. */
  url(db: string): string;
  /** Creates an empty database; returns its URL. */
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

export function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a)) : [];
  if (!versions.length) {
    throw new Error(`PostgreSQL server binaries not found (${root}/<version>/bin/initdb): install Debian's postgresql package (scripts/install-system-packages)`);
  }
  return join(root, versions[0], 'bin');
}

/** uid/gid to run the server as: ourselves, or the `postgres` user when we are root. */
async function serverUser(): Promise<{ uid: number; gid: number } | null> {
  if (process.getuid?.() !== 0) return null;
  try {
    const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch {
    throw new Error('running as root, and there is no `postgres` user to run the test PostgreSQL server as (install Debian\'s postgresql package)');
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startPostgres(): Promise<PostgresCluster> {
  const bin = postgresBinDir();
  const user = await serverUser();
  const dir = mkdtempSync(join(tmpdir(), 'edgekit-pg-'));
  const data = join(dir, 'data');
  const password = randomBytes(18).toString('hex');
  writeFileSync(join(dir, 'pw'), `${password}\n`, { mode: 0o600 });
  if (user) {
    chownSync(dir, user.uid, user.gid);
    chownSync(join(dir, 'pw'), user.uid, user.gid);
  }
  const as = (cmd: string, args: string[]) => (user
    ? run('setpriv', [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--', join(bin, cmd), ...args], { cwd: dir })
    : run(join(bin, cmd), args, { cwd: dir }));
  const fail = (what: string, err: unknown) => {
    const log = existsSync(join(dir, 'log')) ? readFileSync(join(dir, 'log'), 'utf8').slice(-2000) : '';
    rmSync(dir, { recursive: true, force: true });
    const e = err as { stderr?: string; message: string };
    return new Error(`test PostgreSQL: ${what} failed: ${e.stderr || e.message}${log ? `\n${log}` : ''}`);
  };

  try {
    await as('initdb', ['-D', data, '-U', 'postgres', `--pwfile=${join(dir, 'pw')}`, '--auth-host=scram-sha-256', '--auth-local=peer', '-E', 'UTF8', '--no-locale', '--no-sync']);
  } catch (err) {
    throw fail('initdb', err);
  }
  // A throwaway cluster: no fsync (nothing here must survive a power cut), TCP on loopback only,
  // its socket in its own folder.
  let port = 0;
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    const opts = `-c listen_addresses=127.0.0.1 -p ${port} -c unix_socket_directories='${dir}' -c fsync=off -c synchronous_commit=off -c full_page_writes=off`;
    try {
      await as('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-w', '-t', '60', '-o', opts, 'start']);
      break;
    } catch (err) {
      if (attempt >= 3) throw fail('pg_ctl start', err);
    }
  }
  const url = (db: string) => `postgres://postgres:${password}@127.0.0.1:${port}/${db}`;
  return {
    port,
    url,
    async createDatabase(name: string) {
      const c = new pg.Client({ connectionString: url('postgres') });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE "${name.replace(/"/g, '""')}"`);
      } finally {
        await c.end();
      }
      return url(name);
    },
    async stop() {
      try {
        await as('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
