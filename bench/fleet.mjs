/**
 * Fleet server benchmark: simulated devices (edgekit's own device protocol client) check in
 * against a real `edgekit serve` process on 127.0.0.1, with SQLite and with PostgreSQL, beside a
 * ceiling measured in the same run (the same load generator against a minimal node:http server
 * answering fixed JSON). Everything is measured when it runs; nothing is a stored figure.
 * See bench/README.md.
 */
import { fork, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { findPgBin, startPgCluster } from './lib/pg-cluster.mjs';
import { cpuSecondsOfTree, sampleRss } from './lib/process-stats.mjs';
import { bytes, formatTable } from './lib/ratio-table.mjs';
import { runCommand } from './lib/run-command.mjs';

const REPO = dirname(dirname(fileURLToPath(import.meta.url)));
const CLI = join(REPO, 'bin/edgekit.js');
const LOAD = join(REPO, 'bench/lib/fleet-load.mjs');
const CEILING = join(REPO, 'bench/lib/static-json-server.mjs');
const CEILING_NAME = 'ceiling (node:http, fixed JSON)';
const GOAL_RATE = 3000;
const GOAL_P99_MS = 50;

const { values: args } = parseArgs({
  options: {
    devices: { type: 'string', default: '3000' },
    // One load generator per two CPUs: on a 2-core machine one for the generator, one for the server.
    workers: { type: 'string', default: String(Math.max(1, Math.floor(cpus().length / 2))) },
    connections: { type: 'string', default: '64' },
    rate: { type: 'string', default: String(GOAL_RATE) },
    seconds: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    'skip-postgres': { type: 'boolean', default: false },
    profile: { type: 'string' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(`usage: bench/fleet [--devices N] [--workers N] [--connections N] [--rate N] [--seconds N]
                   [--warmup N] [--skip-postgres] [--profile DIR] [--keep]
  --devices N      simulated devices enrolled per server (default 3000)
  --workers N      load-generator processes (default: one per two CPUs, at least one)
  --connections N  keep-alive connections over all workers (default 64); the closed-loop run
                   keeps one check-in in flight on each, the fixed-rate run queues on them
  --rate N         check-ins per second sent in the fixed-rate run (default ${GOAL_RATE}, the goal)
  --seconds N      length of each measured run (default 10)
  --warmup N       seconds of unmeasured check-ins before the runs (default 3)
  --skip-postgres  SQLite and the ceiling only
  --profile DIR    run edgekit serve under node --cpu-prof; profiles are written to DIR
  --keep           keep the work folder (databases, server logs) and print where it is`);
  process.exit(0);
}
const num = {};
for (const k of ['devices', 'workers', 'connections', 'rate', 'seconds', 'warmup']) {
  const v = Number(args[k]);
  if (!Number.isInteger(v) || v < (k === 'warmup' ? 0 : 1)) {
    console.error(`bench/fleet: --${k}: not a whole number${k === 'warmup' ? '' : ' above 0'}: ${args[k]}`);
    process.exit(2);
  }
  num[k] = v;
}
if (num.connections < num.workers) {
  console.error('bench/fleet: --connections: at least one per worker (raise it or lower --workers)');
  process.exit(2);
}

const say = (msg) => process.stderr.write(`bench: ${msg}\n`);
const work = await mkdtemp(join(tmpdir(), 'edgekit-fleet-bench-'));
const cleanups = [];
let cleaning = null;
// Interrupted: the PostgreSQL cluster runs detached and would outlive us, so stop it first.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    say(`${signal}: stopping what the benchmark started`);
    void cleanUp().finally(() => process.exit(130));
  });
}
const results = [];
const notes = [];
try {
  console.log(`edgekit fleet benchmark: node ${process.version}, ${cpus().length} CPUs, load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}${await cpuPressure()}`);
  console.log(`${num.devices} devices, ${num.workers} load-generator processes; ${num.connections} keep-alive connections; closed loop: one check-in in flight on each; fixed rate: ${num.rate}/s; ${num.seconds} s each after ${num.warmup} s of warm-up\n`);

  // The ceiling is measured right before each edgekit server, so each is compared with what the
  // machine gave at about the same time.
  const ceiling = async () => results.push(...(await measure(CEILING_NAME, await startCeiling(), null)));
  await ceiling();
  results.push(...(await measure('edgekit serve, SQLite', await startEdgekit('sqlite', join(work, 'fleet.db')), 'sqlite')));

  if (args['skip-postgres']) notes.push('PostgreSQL: skipped (--skip-postgres)');
  else if (!(await serverTakesPostgres())) notes.push('PostgreSQL: not supported by this build (edgekit serve --help names no postgres:// database)');
  else {
    const bin = await findPgBin();
    if (!bin) throw new Error('no PostgreSQL server programs (initdb, pg_ctl): apt-get install postgresql, or pass --skip-postgres');
    say('starting a throwaway PostgreSQL cluster on 127.0.0.1');
    const pg = await startPgCluster(bin);
    cleanups.push(() => pg.stop());
    notes.push(`PostgreSQL: ${pg.version}, a fresh cluster with the package's default settings (fsync and synchronous_commit on)`);
    await ceiling();
    const server = await startEdgekit('postgres', pg.url);
    server.cpuRoots.push(pg.pid);
    results.push(...(await measure('edgekit serve, PostgreSQL', server, 'postgres')));
  }

  await report();
} finally {
  await cleanUp();
}

/** Stops what this run started (servers, the PostgreSQL cluster) and removes the work folder, once. */
function cleanUp() {
  cleaning ??= (async () => {
    while (cleanups.length) await cleanups.pop()().catch((err) => say(`cleanup: ${err.message}`));
    if (args.keep) say(`work folder kept: ${work}`);
    else await rm(work, { recursive: true, force: true });
  })();
  return cleaning;
}

// ---- servers ----

/** A server process that prints "listening on <url>"; resolves when it does. */
function startProcess(name, cmd, argv, opts = {}) {
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  let out = '';
  let err = '';
  child.stderr.on('data', (c) => (err += c));
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(t);
  };
  cleanups.push(stop);
  return new Promise((resolvePromise, reject) => {
    child.stdout.on('data', (c) => {
      out += c;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolvePromise({ url: m[1], pid: child.pid, cpuRoots: [child.pid], stdout: () => out, stderr: () => err, stop });
    });
    exited.then(({ code, signal }) => reject(new Error(`${name} exited (${code ?? signal}) before listening:\n${(err || out).trim().split('\n').slice(-10).join('\n')}`)));
  });
}

async function startCeiling() {
  say('starting the ceiling server');
  return startProcess('ceiling server', process.execPath, [CEILING]);
}

async function serverTakesPostgres() {
  const { stdout } = await runCommand(process.execPath, [CLI, 'serve', '--help']);
  return /postgres/i.test(stdout);
}

async function startEdgekit(kind, db) {
  say(`starting edgekit serve (${kind})`);
  const node = args.profile ? ['--cpu-prof', '--cpu-prof-dir', resolve(args.profile), '--cpu-prof-name', `serve-${kind}-${Date.now()}.cpuprofile`] : [];
  const server = await startProcess(`edgekit serve --db ${db}`, process.execPath, [...node, CLI, 'serve', '--db', db, '--host', '127.0.0.1', '--port', '0'], { cwd: work });
  // The first start on an empty database writes the first admin token and names the file.
  const m = /first admin token written to (.+)$/m.exec(server.stdout());
  if (!m) throw new Error(`edgekit serve (${kind}) wrote no first admin token: is the database not fresh?\n${server.stdout()}`);
  server.admin = (await readFile(resolve(work, m[1].trim()), 'utf8')).trim();
  return server;
}

async function adminApi(server, method, path, body) {
  const res = await fetch(new URL(path, server.url), {
    method, headers: { authorization: `Bearer ${server.admin}`, 'content-type': 'application/json' }, body: body && JSON.stringify(body),
  });
  const answer = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status}: ${answer.error}`);
  return answer;
}

/** A provisioning token: devices that present it are accepted on their first handshake. */
async function provisioningToken(server) {
  return (await adminApi(server, 'POST', '/v1/admin/provisioning-tokens', { channel: 'stable', tags: ['bench'] })).token;
}

/**
 * What the enrolled devices check in to: a release and a running staged rollout whose first stage
 * (1%) is open, so every check-in goes through the rollout lookup and about 1% of the devices are
 * offered the release. The offered devices never report, so the rollout stays in that stage.
 * Created after enrolment: a rollout over no devices at all would complete at once.
 */
async function startRollout(server) {
  await adminApi(server, 'POST', '/v1/admin/releases', { version: '2.0.0', channel: 'stable' });
  const rollout = await adminApi(server, 'POST', '/v1/admin/rollouts', {
    version: '2.0.0', channel: 'stable', filter: { tags: ['bench'] }, stages: [{ percent: 1 }, { percent: 100 }], maxFailureRatio: 0.5, minSuccessRatio: 1,
  });
  return rollout.id;
}

// ---- load ----

function startWorkers() {
  return Array.from({ length: num.workers }, () => {
    const child = fork(LOAD, [], { env: { ...process.env, EDGEKIT_REPO: REPO }, serialization: 'advanced' });
    let pending = null;
    child.on('message', (m) => {
      const p = pending;
      pending = null;
      if (!p) return;
      if (m.failed) p.reject(new Error(`load generator: ${m.failed}`));
      else p.resolve(m);
    });
    child.on('exit', (code) => pending?.reject(new Error(`load generator exited (${code})`)));
    return {
      ask: (msg) => new Promise((res, rej) => {
        pending = { resolve: res, reject: rej };
        child.send(msg);
      }),
      close: () => new Promise((r) => {
        if (!child.connected) return r();
        child.once('exit', r);
        child.send({ cmd: 'exit' });
      }),
    };
  });
}

function share(total, i, n) {
  return Math.floor(total / n) + (i < total % n ? 1 : 0);
}

async function measure(name, server, kind) {
  const workers = startWorkers();
  try {
    const prov = kind ? await provisioningToken(server) : undefined;
    say(`${name}: enrolling ${num.devices} devices`);
    const ids = Array.from({ length: num.devices }, (_, i) => `bench-${String(i).padStart(6, '0')}`);
    const t0 = performance.now();
    const enrolled = await Promise.all(workers.map((w, i) => w.ask({
      cmd: 'enroll', server: server.url, ids: ids.filter((_, j) => j % workers.length === i), provisioningToken: prov, connections: share(num.connections, i, workers.length),
    })));
    const enrolSeconds = (performance.now() - t0) / 1000;
    const enrolErrors = mergeErrors(enrolled.map((e) => e.errors));
    if (Object.keys(enrolErrors).length) throw new Error(`${name}: enrolment failed: ${describeErrors(enrolErrors)}`);
    if (kind) notes.push(`${name}: ${num.devices} devices enrolled (ed25519 handshake) in ${enrolSeconds.toFixed(1)} s, ${Math.round(num.devices / enrolSeconds)}/s`);
    const rolloutId = kind ? await startRollout(server) : null;

    const run = async (label, message) => {
      const startAt = Date.now() + 300;
      const cpu0 = await cpuSecondsOfTree(server.cpuRoots);
      const rss = sampleRss(server.pid);
      const answers = await Promise.all(workers.map((w, i) => w.ask({ ...message(i), startAt })));
      const cpu = (await cpuSecondsOfTree(server.cpuRoots)) - cpu0;
      const peakRss = await rss.stop();
      const latencies = answers.flatMap((a) => a.latencies).sort((a, b) => a - b);
      const seconds = Math.max(...answers.map((a) => a.seconds));
      const errors = mergeErrors(answers.map((a) => a.errors));
      return {
        name, label, rate: latencies.length / seconds, count: latencies.length, offered: answers.reduce((s, a) => s + a.offered, 0),
        p50: pct(latencies, 0.5), p90: pct(latencies, 0.9), p99: pct(latencies, 0.99), max: latencies.at(-1) ?? NaN,
        errors, errorCount: Object.values(errors).reduce((a, b) => a + b, 0), cpuPerCheckIn: latencies.length ? cpu / latencies.length : NaN, peakRss,
      };
    };
    const closed = (seconds) => (i) => ({ cmd: 'run', mode: 'closed', seconds });
    if (num.warmup) {
      say(`${name}: warm-up`);
      await run('warm-up', closed(num.warmup));
    }
    say(`${name}: closed loop, ${num.connections} in flight`);
    const most = await run(`closed loop, ${num.connections} in flight`, closed(num.seconds));
    say(`${name}: fixed rate ${num.rate}/s`);
    const fixed = await run(`fixed rate ${num.rate}/s`, (i) => ({ cmd: 'run', mode: 'open', rate: share(num.rate, i, workers.length), seconds: num.seconds }));
    if (kind) {
      const status = await adminApi(server, 'GET', `/v1/admin/rollouts/${rolloutId}`);
      notes.push(`${name}: the rollout's first stage holds ${status.counts.offered} of ${num.devices} devices (1% expected); state ${status.state}`);
    }
    return [most, fixed];
  } finally {
    await Promise.all(workers.map((w) => w.close()));
    await server.stop();
  }
}

function pct(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] : NaN;
}

function mergeErrors(list) {
  const all = {};
  for (const e of list) for (const [k, v] of Object.entries(e)) all[k] = (all[k] ?? 0) + v;
  return all;
}

function describeErrors(errors) {
  return Object.entries(errors).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k, v]) => `${v}x ${k}`).join('; ');
}

// ---- report ----

/**
 * The share of the last 10 s in which some runnable task waited for a CPU (Linux pressure stall
 * information): on a shared machine it says how much of a latency figure is other people's work.
 */
async function cpuPressure() {
  try {
    const m = /^some avg10=([\d.]+)/m.exec(await readFile('/proc/pressure/cpu', 'utf8'));
    return m ? `, CPU pressure ${m[1]}% (tasks waiting for a CPU, last 10 s)` : '';
  } catch {
    return '';
  }
}

async function report() {
  const ms = (v) => (Number.isFinite(v) ? `${v.toFixed(v < 10 ? 2 : 1)} ms` : 'n/a');
  // Each row against the ceiling measured last before it.
  const ceiling = {};
  const rows = results.map((r) => {
    if (r.name === CEILING_NAME) ceiling[r.label] = r.rate;
    return [r.name, r.label, Math.round(r.rate), `${((r.rate / ceiling[r.label]) * 100).toFixed(0)}%`, ms(r.p50), ms(r.p90), ms(r.p99), ms(r.max),
      r.errorCount, Number.isFinite(r.cpuPerCheckIn) ? `${Math.round(r.cpuPerCheckIn * 1e6)} µs` : 'n/a', bytes(r.peakRss)];
  });
  console.log(formatTable(['server', 'run', 'check-ins/s', 'of ceiling', 'p50', 'p90', 'p99', 'max', 'errors', 'server CPU/check-in', 'server peak RSS'], rows));
  console.log(`
(closed loop: the next check-in goes when one is answered, so check-ins/s is the most the server
answered; fixed rate: check-ins sent on schedule, latency counted from the scheduled time.
of ceiling: against the ceiling measured just before, in the same kind of run.
server CPU: user+system time of the server process (for PostgreSQL with the postmaster and its
backends) over the run, per check-in answered; RSS: the server's node process only.)`);
  for (const r of results) if (r.errorCount) console.log(`${r.name}, ${r.label}: errors: ${describeErrors(r.errors)}`);
  console.log('');
  for (const n of notes) console.log(n);
  console.log('');
  const sqlite = results.filter((r) => r.name.endsWith('SQLite'));
  if (sqlite.length === 2) {
    const [most, fixed] = sqlite;
    const goals = [
      [`SQLite answers at least ${GOAL_RATE} check-ins/s (most answered: ${Math.round(most.rate)}/s)`, most.rate >= GOAL_RATE && !most.errorCount],
      [
        `SQLite p99 under ${GOAL_P99_MS} ms at ${GOAL_RATE} check-ins/s sent (${num.rate}/s sent: p99 ${ms(fixed.p99)}, ${Math.round(fixed.rate)}/s answered, ${fixed.errorCount} errors)`,
        num.rate >= GOAL_RATE && fixed.p99 < GOAL_P99_MS && !fixed.errorCount && fixed.rate >= 0.99 * GOAL_RATE,
      ],
    ];
    for (const [what, met] of goals) console.log(`${met ? 'met   ' : 'MISSED'} ${what}`);
  }
  console.log(`\nload average at the end ${loadavg()[0].toFixed(1)}${await cpuPressure()}`);
}
