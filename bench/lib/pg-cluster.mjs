/**
 * A throwaway PostgreSQL cluster on 127.0.0.1 from Debian's postgresql package: initdb into a
 * temporary folder, pg_ctl start on a free port (trust auth, loopback only), pg_ctl stop and delete.
 * PostgreSQL refuses to run as root, so as root its commands run as the `postgres` user the
 * package creates. Server settings are the package defaults (durable commits).
 */
import { chown, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { runCommand } from './run-command.mjs';

/** The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<major>/bin. */
export async function findPgBin() {
  try {
    const { stdout } = await runCommand('sh', ['-c', 'command -v pg_ctl && command -v initdb']);
    const [pgCtl] = stdout.trim().split('\n');
    return pgCtl.slice(0, pgCtl.lastIndexOf('/'));
  } catch {
    const majors = await readdir('/usr/lib/postgresql').catch(() => []);
    const newest = majors.filter((m) => /^\d+$/.test(m)).sort((a, b) => Number(b) - Number(a))[0];
    return newest ? `/usr/lib/postgresql/${newest}/bin` : null;
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export async function startPgCluster(bin) {
  const dir = await mkdtemp(join(tmpdir(), 'edgekit-fleet-bench-pg-'));
  const data = join(dir, 'data');
  const sockets = join(dir, 'sockets');
  await mkdir(sockets);
  const asRoot = userInfo().uid === 0;
  let as = (cmd, args) => runCommand(cmd, args);
  if (asRoot) {
    const { stdout } = await runCommand('id', ['-u', 'postgres']).catch(() => {
      throw new Error('running as root, and there is no postgres user to run PostgreSQL as (apt-get install postgresql creates it)');
    });
    const { stdout: gid } = await runCommand('id', ['-g', 'postgres']);
    for (const p of [dir, sockets]) await chown(p, Number(stdout), Number(gid));
    as = (cmd, args) => runCommand('runuser', ['-u', 'postgres', '--', cmd, ...args]);
  }
  const port = await freePort();
  await as(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--no-locale', '--no-sync']);
  const options = `-h 127.0.0.1 -p ${port} -k ${sockets} -c max_connections=200`;
  await as(join(bin, 'pg_ctl'), ['-D', data, '-o', options, '-l', join(dir, 'server.log'), '-w', '-t', '60', 'start']);
  const { stdout: pidLine } = await runCommand('head', ['-n', '1', join(data, 'postmaster.pid')]);
  const { stdout: version } = await runCommand(join(bin, 'postgres'), ['--version']);
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    pid: Number(pidLine.trim()),
    version: version.trim(),
    async stop() {
      await as(join(bin, 'pg_ctl'), ['-D', data, '-m', 'fast', '-w', 'stop']).catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
}
