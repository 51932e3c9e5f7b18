import type { Command } from 'commander';
import { createPublicKey } from 'node:crypto';
import { AGENT_CONFIG_PATH, loadAgentConfig } from '../ota/agent/config.js';
import { loadDeviceIdentity, pendingKey, prepareKeyRotation } from '../ota/agent/device-identity.js';
import { keyFingerprint } from '../fleet/auth.js';
import { rebootDevice, runPass, runService } from '../ota/agent/service.js';
import { EdgekitError } from '../util/errors.js';

const log = (line: string) => process.stdout.write(`${line}\n`);

/** Device-side commands: they run on the device, against its own disk. */
export function registerUpdate(program: Command): void {
  program
    .command('update')
    .description('on a device: install the newest release from a release repository folder (e.g. on a USB stick), then reboot into it')
    .requiredOption('--from <dir>', 'release repository folder (metadata/ and targets/)')
    .option('--config <file>', 'update agent configuration', AGENT_CONFIG_PATH)
    .option('--no-reboot', 'leave the reboot to the caller')
    .option('--partitions <file>', 'partition map (`disk <prefix>`, `part <role> <n>` lines) instead of /etc/edgekit/partitions: update a disk attached elsewhere')
    .option('--cmdline <text>', 'the command line of the running slot (edgekit.slot=a|b) instead of /proc/cmdline')
    .action(async (o: { from: string; config: string; reboot: boolean; partitions?: string; cmdline?: string }) => {
      const config = await loadAgentConfig(o.config);
      let rebootArgument: string | undefined;
      const outcome = await runPass({ config, fromDir: o.from, log, device: { partitionsFile: o.partitions, cmdline: o.cmdline }, onReboot: (a) => (rebootArgument = a) });
      if (outcome === 'failed') throw new EdgekitError(`update from ${o.from} failed (see above)`);
      if (outcome === 'reboot' && o.reboot) await rebootDevice(log, rebootArgument);
    });
  program
    .command('agent')
    .description('on a device: the update agent service (checks, downloads, installs, reboots, health-checks, commits or reports a rollback)')
    .option('--config <file>', 'update agent configuration', AGENT_CONFIG_PATH)
    .option('--once', 'one pass, then exit (code 0: idle or committed; 3: a reboot is due; 1: failed)')
    .option('--partitions <file>', 'with --once: partition map instead of /etc/edgekit/partitions')
    .option('--cmdline <text>', 'with --once: the running slot\'s command line instead of /proc/cmdline')
    .action(async (o: { config: string; once?: boolean; partitions?: string; cmdline?: string }) => {
      const config = await loadAgentConfig(o.config);
      if (!o.once) return runService(config, log);
      const outcome = await runPass({ config, log, device: { partitionsFile: o.partitions, cmdline: o.cmdline } });
      log(`edgekit-agent: pass ended: ${outcome}`);
      if (outcome === 'failed') process.exitCode = 1;
      if (outcome === 'reboot') process.exitCode = 3;
    });
  program
    .command('identity')
    .description('on a fleet-managed device: show its id and public key (to register it ahead with `edgekit fleet devices add`), or ask for a new key')
    .option('--config <file>', 'update agent configuration', AGENT_CONFIG_PATH)
    .option('--rotate', 'make a new key; the agent hands it to the fleet server at its next check-in and uses it from then on')
    .option('--json', 'print JSON')
    .action(async (o: { config: string; rotate?: boolean; json?: boolean }) => {
      const config = await loadAgentConfig(o.config);
      if (!config.fleet) throw new EdgekitError(`${o.config}: names no fleet server (update.fleet): this device has no fleet identity`);
      const identity = await loadDeviceIdentity(config.fleet);
      const next = o.rotate ? await prepareKeyRotation(config.fleet.keyFile) : await pendingKey(config.fleet.keyFile);
      const publicKey = createPublicKey(identity.privateKey).export({ type: 'spki', format: 'pem' }) as string;
      const out = {
        deviceId: identity.deviceId, idSource: identity.idSource, publicKey, fingerprint: keyFingerprint(publicKey),
        nextFingerprint: next ? keyFingerprint(createPublicKey(next).export({ type: 'spki', format: 'pem' }) as string) : null,
      };
      if (o.json) {
        log(JSON.stringify(out));
        return;
      }
      log(`device ${out.deviceId} (id from ${out.idSource === 'config' ? 'the config partition' : 'its first key'}), key ${out.fingerprint}`);
      process.stdout.write(publicKey);
      if (out.nextFingerprint) log(`new key ${out.nextFingerprint} waits for the next check-in (run \`edgekit agent --once\` to hand it over now)`);
    });
}
