import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EdgekitError } from '../util/errors.js';

/** `edgekit serve`: the fleet server (device check-ins and reports, rollouts, admin API, /metrics). */
export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the fleet server: devices check in and report, operators manage releases and staged rollouts')
    .option('--db <file>', 'fleet database (SQLite)', 'fleet.db')
    .option('--repo <dir>', 'the static release repository devices download from (published separately); rollout costs are read from its targets metadata')
    .option('--host <address>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: any free port)', '8480')
    .option('--no-dashboard', 'do not serve the web dashboard at /dashboard/')
    .action(async (o: { db: string; repo?: string; host: string; port: string; dashboard: boolean }) => {
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new EdgekitError(`--port: not a port number: ${o.port}`);
      const [{ openSqliteStore }, { FleetService }, { startFleetServer }] = await Promise.all([
        import('../fleet/store/sqlite.js'), import('../fleet/service.js'), import('../fleet/server.js'),
      ]);
      if (o.repo && !existsSync(join(o.repo, 'metadata', 'timestamp.json'))) {
        throw new EdgekitError(`--repo ${o.repo}: not a release repository (no metadata/timestamp.json; make one with edgekit repo init)`);
      }
      const store = openSqliteStore(o.db);
      const service = await FleetService.open(store);
      const bootstrap = await service.bootstrapAdminToken();
      if (bootstrap) {
        // Written once, readable by the owner only: the only copy of the first admin token.
        const file = `${o.db}.admin-token`;
        await writeFile(file, `${bootstrap}\n`, { mode: 0o600, flag: 'wx' }).catch((err: NodeJS.ErrnoException) => {
          throw new EdgekitError(`${file}: cannot write the first admin token: ${err.code ?? err.message}`);
        });
        await chmod(file, 0o600);
        process.stdout.write(`edgekit serve: first admin token written to ${file}\n`);
      }
      const running = await startFleetServer({ service, host: o.host, port, repo: o.repo, dashboard: o.dashboard, log: (l) => process.stderr.write(`${l}\n`) });
      process.stdout.write(`edgekit serve: listening on ${running.url}${o.repo ? ` (release repository ${o.repo})` : ''}\n`);
      if (o.dashboard) process.stdout.write(`edgekit serve: dashboard at ${running.url}/dashboard/ (sign in with an admin token)\n`);
      const stop = () => {
        void running.close().then(() => store.close()).then(() => process.exit(0));
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
}
