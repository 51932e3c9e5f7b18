import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { chmod, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EdgekitError } from '../util/errors.js';
import { durationSeconds } from './duration.js';

interface ServeOptions {
  db: string;
  adminTokenFile?: string;
  repo?: string;
  payloadsUrl?: string;
  onlineKeys?: string;
  host: string;
  port: string;
  tlsCert?: string;
  tlsKey?: string;
  keepReports?: string;
  dashboard: boolean;
}

/** `edgekit serve`: the fleet server (device check-ins and reports, rollouts, admin API, /metrics). */
export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the fleet server: devices check in and report, operators manage releases and staged rollouts')
    .option('--db <file|url>', 'fleet database: a SQLite file (or sqlite:<path>), or postgres://user:pass@host/db for servers sharing one database', 'fleet.db')
    .option('--admin-token-file <file>', 'where the first admin token is written on an empty database (default: <db>.admin-token; fleet.admin-token for PostgreSQL)')
    .option('--repo <dir>', 'the release repository (edgekit repo init / release): served to authenticated devices offered a release; rollout costs are read from its targets metadata')
    .option('--payloads-url <url>', 'with --repo: devices fetch payloads (the targets/ folder) from this static host or CDN instead')
    .option('--online-keys <dir>', 'with --repo: the snapshot and timestamp keys (only those); the server re-signs that metadata before it expires, and takes releases operators sign (edgekit release --fleet without --repo)')
    .option('--host <address>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: any free port)', '8480')
    .option('--tls-cert <file>', 'serve HTTPS with this PEM certificate (chain); needs --tls-key')
    .option('--tls-key <file>', 'the PEM private key of --tls-cert')
    .option('--keep-reports <duration>', 'delete device reports older than this (e.g. 90d), keeping each device\'s newest 20; default: keep all')
    .option('--no-dashboard', 'do not serve the web dashboard at /dashboard/')
    .action(async (o: ServeOptions) => {
      const port = Number(o.port);
      const keepReportsMs = o.keepReports === undefined ? undefined : durationSeconds(o.keepReports, '--keep-reports') * 1000;
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new EdgekitError(`--port: not a port number: ${o.port}`);
      if (!o.tlsCert !== !o.tlsKey) throw new EdgekitError(o.tlsCert ? '--tls-cert needs --tls-key' : '--tls-key needs --tls-cert');
      const tls = o.tlsCert && o.tlsKey ? { cert: await readPem(o.tlsCert, '--tls-cert'), key: await readPem(o.tlsKey, '--tls-key') } : undefined;
      const log = (l: string) => process.stderr.write(`${l}\n`);
      const [{ openFleetStore }, { FleetService }, { startFleetServer, checkTls }] = await Promise.all([
        import('../fleet/store/open.js'), import('../fleet/service.js'), import('../fleet/server.js'),
      ]);
      // Before the database is touched: a bad key or repository must not leave a first admin token behind.
      if (tls) checkTls(tls);
      if (o.payloadsUrl && !o.repo) throw new EdgekitError('--payloads-url needs --repo (the server hands out the metadata, the payloads come from there)');
      const payloadsUrl = o.payloadsUrl ? folderUrl(o.payloadsUrl) : undefined;
      if (o.repo && !existsSync(join(o.repo, 'metadata', 'timestamp.json'))) {
        throw new EdgekitError(`--repo ${o.repo}: not a release repository (no metadata/timestamp.json; make one with edgekit repo init)`);
      }
      if (o.onlineKeys && !o.repo) throw new EdgekitError('--online-keys needs --repo (the repository whose snapshot and timestamp the server re-signs)');
      const signing = o.onlineKeys ? await import('../fleet/repo-signer.js') : undefined;
      if (signing && o.onlineKeys) await signing.checkOnlineKeys(o.onlineKeys);
      const { store, defaultAdminTokenFile } = await openFleetStore(o.db, { log });
      let running: Awaited<ReturnType<typeof startFleetServer>>;
      let signer: import('../fleet/repo-signer.js').RepoSigner | undefined;
      try {
        const service = await FleetService.open(store, Date.now, { keepReportsMs });
        // Written once, readable by the owner only: the only copy of the first admin token.
        const file = o.adminTokenFile ?? defaultAdminTokenFile;
        const keep = async (token: string): Promise<boolean> => {
          try {
            await writeFile(file, `${token}\n`, { mode: 0o600, flag: 'wx' });
          } catch (err) {
            const code = (err as NodeJS.ErrnoException).code;
            // Another server on this machine, started at the same moment, is writing its first token
            // there: it stores it in a moment. A file left from an earlier database stays an error.
            if (code === 'EEXIST' && (await adminTokenAppears(service))) return false;
            throw new EdgekitError(`${file}: cannot write the first admin token: ${code ?? (err as Error).message}`);
          }
          await chmod(file, 0o600);
          return true;
        };
        if (await service.bootstrapAdminToken(keep, () => rm(file, { force: true }))) {
          process.stdout.write(`edgekit serve: first admin token written to ${file}\n`);
        }
        if (signing && o.repo && o.onlineKeys) {
          const repo = o.repo;
          signer = new signing.RepoSigner({ repo, keys: o.onlineKeys, store, log, audit: (d) => service.audit(null, 'repo.sign', repo, d) });
        }
        running = await startFleetServer({ service, host: o.host, port, tls, repo: o.repo, payloadsUrl, dashboard: o.dashboard, log, signer });
        process.stdout.write(`edgekit serve: listening on ${running.url}${o.repo ? ` (release repository ${o.repo})` : ''}\n`);
        if (o.dashboard) process.stdout.write(`edgekit serve: dashboard at ${running.url}/dashboard/ (sign in with an admin token)\n`);
        signer?.start();
      } catch (err) {
        // An open pool would keep the process alive after the error is printed.
        await store.close().catch(() => {});
        throw err;
      }
      const stop = () => {
        void Promise.all([running.close(), signer?.stop()]).then(() => store.close()).then(() => process.exit(0));
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
}

/** Whether another server stores the first admin token within a few seconds. */
async function adminTokenAppears(service: { store: { countAdminTokens(): Promise<number> } }): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    if ((await service.store.countAdminTokens()) > 0) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

async function readPem(file: string, option: string): Promise<Buffer> {
  const data = await readFile(file).catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`${option} ${file}: cannot read: ${err.code ?? err.message}`);
  });
  if (!data.includes('-----BEGIN ')) throw new EdgekitError(`${option} ${file}: not a PEM file (no -----BEGIN line)`);
  return data;
}

/** --payloads-url: an http(s) folder URL (target names are resolved below it). */
function folderUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new EdgekitError(`--payloads-url: not a URL: ${text}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new EdgekitError(`--payloads-url: not an http(s) URL: ${text}`);
  return url.href.replace(/\/*$/, '/');
}
