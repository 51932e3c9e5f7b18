/**
 * One load-generator process of bench/fleet (started with fork; the parent drives it over IPC).
 * Its simulated devices speak the fleet protocol through edgekit's own device client
 * (dist/fleet/protocol/client.js, the module the update agent uses), over one keep-alive agent.
 *
 * Messages from the parent:
 *   {cmd:'enroll', server, ids, provisioningToken, connections}  -> {done:'enroll', enrolled, errors}
 *   {cmd:'run', mode:'closed', seconds, startAt}                 -> {done:'run', ...}
 *   {cmd:'run', mode:'open', rate, seconds, startAt}             -> {done:'run', ...}
 *   {cmd:'exit'}
 * The devices share `connections` keep-alive connections (the agent opens no more; requests beyond
 * them wait for a free one, and that wait counts in their latency). Bursts of new connections would
 * measure the kernel's listen queue instead of the server.
 * closed: one loop per connection, each sending the next device's check-in when its last one is
 *   answered (the most the server answers). open: check-ins sent on a fixed schedule of `rate` per second,
 *   whatever the answers do; latency counts from the scheduled send time, so a server that falls
 *   behind shows it in the latency rather than slowing the generator down (no coordinated omission).
 * Each run answers with the latencies (ms) of the check-ins answered (closed: inside the window;
 * open: all of the schedule), how many answers offered a release, and the errors by message.
 */
import { generateKeyPairSync } from 'node:crypto';
import { Agent } from 'node:http';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const REPO = process.env.EDGEKIT_REPO;
const { FleetDeviceClient } = await import(join(REPO, 'dist/fleet/protocol/client.js'));

const REQUEST_TIMEOUT_MS = 10_000;
const CHECK_IN = { board: 'bench-board', version: '1.0.0', slot: 'a', slotState: { a: 'good', b: 'good' } };

let agent = null;
let connections = 1;
let devices = [];
let next = 0;

process.on('message', (m) => {
  handle(m).then((answer) => answer && process.send(answer), (err) => {
    process.send({ failed: err.stack ?? String(err) });
  });
});

async function handle(m) {
  if (m.cmd === 'exit') {
    agent?.destroy();
    process.disconnect();
    return null;
  }
  if (m.cmd === 'enroll') return enroll(m);
  if (m.cmd === 'run') return m.mode === 'closed' ? closedLoop(m) : openLoop(m);
  throw new Error(`unknown command ${m.cmd}`);
}

async function enroll({ server, ids, provisioningToken, connections: n }) {
  connections = n;
  agent = new Agent({ keepAlive: true, maxSockets: connections });
  devices = ids.map((deviceId) => new FleetDeviceClient({
    server, deviceId, privateKey: generateKeyPairSync('ed25519').privateKey, provisioningToken, agent, timeoutMs: REQUEST_TIMEOUT_MS,
  }));
  const errors = {};
  let enrolled = 0;
  let i = 0;
  await Promise.all(Array.from({ length: connections }, async () => {
    while (i < devices.length) {
      const d = devices[i++];
      try {
        const status = await d.authenticate();
        if (status === 'accepted') enrolled++;
        else count(errors, `enrolment answered ${status}`);
      } catch (err) {
        count(errors, err.message);
      }
    }
  }));
  return { done: 'enroll', enrolled, errors };
}

function count(errors, message) {
  // Messages name the device or URL; the kind of error is what matters in the summary.
  const key = message.replace(/device \S+/g, 'device …').slice(0, 160);
  errors[key] = (errors[key] ?? 0) + 1;
}

function nextDevice() {
  return devices[next++ % devices.length];
}

async function waitUntil(epochMs) {
  const wait = epochMs - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}

async function closedLoop({ seconds, startAt }) {
  await waitUntil(startAt);
  const latencies = [];
  const errors = {};
  let offered = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  await Promise.all(Array.from({ length: connections }, async () => {
    while (performance.now() < end) {
      const sent = performance.now();
      try {
        const r = await nextDevice().checkIn(CHECK_IN);
        const done = performance.now();
        if (done <= end) {
          latencies.push(done - sent);
          if (r.release) offered++;
        }
      } catch (err) {
        count(errors, err.message);
      }
    }
  }));
  return { done: 'run', latencies, offered, errors, seconds: (Math.min(performance.now(), end) - t0) / 1000 };
}

async function openLoop({ rate, seconds, startAt }) {
  await waitUntil(startAt);
  const latencies = [];
  const errors = {};
  let offered = 0;
  let sent = 0;
  let settled = 0;
  let last = 0;
  const t0 = performance.now();
  const total = Math.round(rate * seconds);
  const perMs = rate / 1000;
  const fire = (scheduled) => {
    nextDevice().checkIn(CHECK_IN).then((r) => {
      last = performance.now();
      latencies.push(last - scheduled);
      if (r.release) offered++;
    }, (err) => count(errors, err.message)).finally(() => settled++);
  };
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor((performance.now() - t0) * perMs) + 1);
      while (sent < due) fire(t0 + sent++ / perMs);
      if (sent < total) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });
  // Every check-in of the schedule counts, the last answers too (bounded by the request timeout):
  // the rate achieved is answers over the time from the first send to the last answer.
  while (settled < sent) await new Promise((r) => setTimeout(r, 5));
  return { done: 'run', latencies, offered, errors, seconds: Math.max(seconds, (last - t0) / 1000) };
}
