import type { Command } from 'commander';
import { AGENT_CONFIG_PATH, loadAgentConfig } from '../ota/agent/config.js';
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
}
