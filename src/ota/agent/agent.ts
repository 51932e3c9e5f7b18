/**
 * One pass of the update agent. It decides from the disk, the boot chain's state and its own state
 * file alone what is left to do, so a restart, a reboot or a power cut at any point only means it
 * picks up from there:
 *
 *   running an unblessed slot (a trial boot) -> health checks -> markGood, 'committed'
 *                                               or 'failed' and a reboot (the boot chain counts down)
 *   the slot last tried fell back            -> 'rolled-back'; that release is not tried again
 *   a newer signed release                   -> cost, budget, invalidate the other slot, download
 *                                               and write it (resuming), check it, boot files,
 *                                               tryOnce, 'rebooting'
 */
import { join } from 'node:path';
import { readFile, rm } from 'node:fs/promises';
import type { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import type { MetadataClient, TargetInfo, UpdateInfo } from '../repo/index.js';
import type { BlockDevice } from '../slots/block-device.js';
import { otherSlot, type Bootchooser, type Slot, type SlotState } from '../slots/bootchooser.js';
import { directSteps, type StepDriver } from '../sim/step-driver.js';
import type { AgentConfig } from './config.js';
import type { HealthResult } from './health.js';
import type { Report, ReportState, Reporter } from './reports.js';
import { checkSlot, writeFromDelta, writeFullPayload } from './slot-install.js';
import { StateStore, type AgentState, type Attempt } from './state.js';
import type { TargetSource } from './target-source.js';
import { bytesPresent, downloadToFile, resumableStream, type TransferOptions } from './transfer.js';

/** The device as the agent sees it; the simulator and a real device provide the same. */
export interface AgentHost {
  chooser: Bootchooser;
  /** The boot partition, repaired before the bootchooser edits it (what a cut may leave). */
  boot?: FatVolume;
  slotDevice(slot: Slot): BlockDevice;
  /** Device paths of the slots, for applying deltas; without them only full payloads are used. */
  slotPath?(slot: Slot): string;
  health(): Promise<HealthResult>;
}

export interface AgentContext {
  config: AgentConfig;
  host: AgentHost;
  client: MetadataClient;
  source: TargetSource;
  report: Reporter;
  log?: (line: string) => void;
  steps?: StepDriver;
  sleep?: (ms: number) => Promise<void>;
  /** Called whenever work progresses (the watchdog's kick). */
  alive?: () => void;
}

export type AgentOutcome =
  /** Nothing to do. */
  | 'idle'
  /** Reboot now: a new slot waits to be tried, or this trial boot was unhealthy. */
  | 'reboot'
  | 'committed'
  | 'rolled-back'
  | 'failed';

export async function runAgentOnce(ctx: AgentContext): Promise<AgentOutcome> {
  const { config, host } = ctx;
  const steps = ctx.steps ?? directSteps;
  const log = ctx.log ?? (() => {});
  const store = new StateStore(config.stateDir);
  const state = await store.load();
  const active = await host.chooser.activeSlot();
  const other = otherSlot(active);
  const say = (s: ReportState, extra: Partial<Report> = {}) =>
    ctx.report({ state: s, running: config.version, slot: active, name: config.name, board: config.board, ...extra });

  try {
    if (host.boot) await steps.step('repair-boot', () => host.boot!.repair());
    const slots = await host.chooser.state();
    const stateOf = (s: Slot): SlotState => slots.find((x) => x.slot === s) ?? { slot: s, bootable: false };

    // 1. A trial boot of a new slot: bless it if healthy, else let the boot chain count it down.
    if (!stateOf(active).good) {
      const health = await steps.step('health', () => host.health());
      if (!health.ok) {
        if (state.attempt?.slot === active) state.attempt.unhealthyBoots = (state.attempt.unhealthyBoots ?? 0) + 1;
        await store.save(state);
        await say('failed', { version: config.version, reason: `slot ${active} is unhealthy: ${health.reason}; rebooting so the boot chain can fall back` });
        return 'reboot';
      }
      await steps.step('mark-good', () => host.chooser.markGood(active));
      return commit(state);
    }
    if (state.attempt && state.attempt.slot === active && state.attempt.version === config.version) return commit(state);
    // U-Boot spends a try on every boot, the committed slot's too: give them back, or the counter
    // starts over (with an extra reset) every tries+1 boots. No-op for the other boot chains.
    if (host.chooser.renewGood) await host.chooser.renewGood(active);

    // 2. The slot last tried did not stay: the boot chain fell back to this one.
    if (state.attempt && state.attempt.slot === other && state.attempt.phase === 'tried') {
      const tried = stateOf(other);
      if (tried.bootable && !tried.failed && (await host.chooser.primarySlot()) === other) {
        log(`edgekit-agent: slot ${other} (${state.attempt.version}) is waiting to be tried: rebooting`);
        return 'reboot';
      }
      // The boot chain fell back to this slot: keep it. (U-Boot would otherwise try the failed
      // slot again once this slot's counter runs down; for the others this changes nothing.)
      await steps.step('mark-good', () => host.chooser.markGood(active));
      const version = state.attempt.version;
      const boots = state.attempt.unhealthyBoots;
      state.rolledBack = [...new Set([...state.rolledBack, version])];
      state.attempt = undefined;
      await store.save(state);
      await say('rolled-back', {
        version,
        reason: `slot ${other} did not pass its health checks${boots ? ` (${boots} unhealthy boot${boots > 1 ? 's' : ''} reported)` : ''}; slot ${active} with ${config.version} runs again`,
      });
      return 'rolled-back';
    }

    // 3. A newer release?
    await say('checking');
    const info = await ctx.client.refresh();
    if (!info) {
      // A fleet-managed device is told what to install (the fleet link logged why nothing was offered).
      log(config.fleet ? `edgekit-agent: nothing to install: ${config.version} stays` : `edgekit-agent: ${config.version} is the newest release on ${config.channel}`);
      return 'idle';
    }
    if (state.rolledBack.includes(info.version)) {
      log(`edgekit-agent: ${info.version} rolled back on this device before: waiting for a newer release`);
      return 'idle';
    }
    return await install(ctx, store, state, info, active, say, steps);
  } catch (err) {
    if (!(err instanceof EdgekitError)) throw err;
    await say('failed', { version: state.attempt?.version, reason: err.message });
    return 'failed';
  }

  async function commit(s: AgentState): Promise<AgentOutcome> {
    s.slots[active] = config.version;
    const was = s.attempt;
    s.attempt = undefined;
    await store.save(s);
    await say('committed', { version: config.version, ...(was?.unhealthyBoots ? { reason: `after ${was.unhealthyBoots} unhealthy boots` } : {}) });
    return 'committed';
  }
}

async function install(
  ctx: AgentContext,
  store: StateStore,
  state: AgentState,
  info: UpdateInfo,
  active: Slot,
  say: (s: ReportState, extra?: Partial<Report>) => Promise<void>,
  steps: StepDriver,
): Promise<AgentOutcome> {
  const { config, host } = ctx;
  const other = otherSlot(active);
  const payload = info.rootPayload;
  if (!payload) throw new EdgekitError(`release ${info.version} has no root payload: this agent updates images with the root on disk`);
  const expected = { sha256: payload.sha256, size: payload.length, verity: info.release.verity };
  const bootDir = join(config.stateDir, 'download');
  const bootFiles: TargetInfo[] = [info.kernel, info.initrd, ...Object.values(info.devicetrees)];
  const fileFor = (t: TargetInfo) => join(bootDir, `${t.sha256}.${t.path.slice(t.path.lastIndexOf('/') + 1)}`);

  // Continue the attempt on record only if it is this very payload for the same slot.
  let attempt: Attempt | undefined = state.attempt;
  if (attempt && (attempt.version !== info.version || attempt.sha256 !== payload.sha256 || attempt.slot !== other)) attempt = undefined;

  // What is left to fetch: a delta from the running version when there is one (and a device path
  // to apply it), else the rest of the full payload; and the boot files not yet in /data.
  const delta = host.slotPath ? info.deltas.find((d) => d.fromVersion === config.version) : undefined;
  const method: 'full' | 'delta' = attempt?.source ?? (delta ? 'delta' : 'full');
  let payloadBytes = 0;
  if (attempt?.phase !== 'written') {
    if (method === 'delta' && delta) payloadBytes = delta.length - (await bytesPresent(delta, fileFor(delta)));
    else payloadBytes = payload.length - (attempt?.flushed ?? 0);
  }
  let cost = payloadBytes;
  for (const t of bootFiles) cost += t.length - (await bytesPresent(t, fileFor(t)));

  const spent = attempt?.downloaded ?? 0;
  if (config.dataBudget !== undefined && spent + cost > config.dataBudget) {
    await say('failed', { version: info.version, bytes: cost, method, reason: `data budget: the update needs ${cost} more bytes, ${spent} already spent of the ${config.dataBudget} allowed` });
    return 'failed';
  }
  await say('downloading', { version: info.version, bytes: cost, method });

  if (!attempt) {
    // Nothing may boot the slot while it is overwritten.
    await steps.step('invalidate', () => host.chooser.invalidate(other));
    attempt = { version: info.version, slot: other, sha256: payload.sha256, size: payload.length, source: method, phase: 'writing', flushed: 0, downloaded: 0 };
  }
  const a = attempt;
  state.attempt = a;
  await store.save(state);

  const transfer: TransferOptions = {
    source: ctx.source,
    attempts: config.download.attempts,
    maxBackoffMs: config.download.maxBackoff * 1000,
    stallMs: config.download.stallTimeout * 1000,
    sleep: ctx.sleep,
    onReceived(n) {
      a.downloaded += n;
      ctx.alive?.();
      if (config.dataBudget !== undefined && a.downloaded > config.dataBudget) {
        throw new EdgekitError(`data budget: ${a.downloaded} bytes downloaded for ${info.version}, ${config.dataBudget} allowed`);
      }
    },
    onRetry: (message, n, delay) => ctx.log?.(`edgekit-agent: ${message}; resuming (attempt ${n}) in ${Math.round(delay / 1000)} s`),
  };

  try {
    if (a.phase === 'writing') {
      await steps.step('write-slot', async () => {
        if (a.source === 'delta' && delta && host.slotPath) {
          const file = fileFor(delta);
          await downloadToFile(delta, file, transfer);
          await writeFromDelta({ deltaFile: file, activePath: host.slotPath(active), slotPath: host.slotPath(other), slot: host.slotDevice(other), expected }).catch(async (err: unknown) => {
            // A delta that does not apply (the running slot is not what it was made from) is not
            // tried again: the next pass downloads the full payload.
            a.source = 'full';
            a.flushed = 0;
            await rm(file, { force: true });
            throw err;
          });
        } else {
          await writeFullPayload({
            slot: host.slotDevice(other),
            expected,
            present: a.flushed,
            download: (from) => resumableStream(payload, from, transfer),
            onFlushed: async (length) => {
              a.flushed = length;
              await store.save(state);
            },
          }).catch((err: unknown) => {
            // A slot whose bytes do not hash right is written again from the start next time.
            if (err instanceof EdgekitError && /sha256|dm-verity/.test(err.message)) a.flushed = 0;
            throw err;
          });
        }
      });
      a.phase = 'written';
      a.flushed = payload.length;
      await store.save(state);
    } else {
      // Written by an earlier run: check it again, nothing may have changed it since.
      await steps.step('check-installed', () => checkSlot(host.slotDevice(other), expected));
    }

    await say('installing', { version: info.version });
    for (const t of bootFiles) await downloadToFile(t, fileFor(t), transfer);
    // The boot files are held in memory while they go onto the boot partition: first let go of
    // what the download and the slot check left behind (the process must stay under 96 MiB).
    collectGarbage();
    const kernel = await readFile(fileFor(info.kernel));
    const initrd = await readFile(fileFor(info.initrd));
    const devicetrees: Record<string, Buffer> = {};
    for (const [rel, t] of Object.entries(info.devicetrees)) devicetrees[rel] = await readFile(fileFor(t));
    await steps.step('try-once', () => host.chooser.tryOnce(other, { kernel, initrd, devicetrees, cmdline: info.release.slot.cmdline, title: `${config.name} ${info.version}` }));
  } catch (err) {
    // Keep the download progress (and the budget count) for the next run.
    await store.save(state).catch(() => {});
    throw err;
  }
  a.phase = 'tried';
  state.slots[other] = info.version;
  await store.save(state);
  // The boot files are on the boot partition now; /data is small.
  await rm(bootDir, { recursive: true, force: true });
  await say('rebooting', { version: info.version, reason: `slot ${other} is tried on the next boot (${config.tries} tries)` });
  return 'reboot';
}

/** A full collection when node runs with --expose-gc (the service does); otherwise nothing. */
function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (typeof gc === 'function') gc();
}
