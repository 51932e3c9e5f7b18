/**
 * The bootchooser an image uses, by the name its update configuration carries (the board's
 * `update.bootchooser`, written into /etc/edgekit/update.json by the builder). The boot partition
 * is checked to be laid out for that chooser before anything is written to it, so an image whose
 * configuration and boot partition disagree fails with a reason instead of half an update.
 */
import { configOsPrefix } from '../../boot/rpi.js';
import type { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import type { Bootchooser, BootchooserKind, CmdlineSource } from './bootchooser.js';
import { systemdBootChooser } from './systemd-boot.js';
import { CONFIG_TXT, slotOfPrefix, trybootChooser } from './tryboot.js';
import { ubootChooser } from './uboot.js';

export interface OpenChooserOptions {
  /** The board's update.tries. */
  tries: number;
  cmdline?: CmdlineSource;
}

export async function openBootchooser(kind: BootchooserKind, boot: FatVolume, opts: OpenChooserOptions): Promise<Bootchooser> {
  const mismatch = (what: string) => new EdgekitError(`the boot partition ${what}: it is not laid out for the ${kind} bootchooser the update configuration names`);
  switch (kind) {
    case 'systemd-boot':
      if (!(await boot.stat('loader'))?.isDir || !(await boot.stat('loader/entries'))?.isDir) throw mismatch('has no loader/entries folder');
      return systemdBootChooser(boot, opts);
    case 'uboot':
      if (!(await boot.stat('boot.scr'))) throw mismatch('has no boot.scr');
      return ubootChooser(boot, opts);
    case 'tryboot': {
      const config = await boot.stat(CONFIG_TXT);
      if (!config || config.isDir) throw mismatch(`has no ${CONFIG_TXT}`);
      if (!slotOfPrefix(configOsPrefix((await boot.readFile(CONFIG_TXT)).toString('utf8')))) throw mismatch(`has a ${CONFIG_TXT} that names no slot folder (os_prefix=)`);
      return trybootChooser(boot, opts);
    }
    default:
      throw new EdgekitError(`unknown bootchooser ${JSON.stringify(kind)} (expected systemd-boot, uboot or tryboot)`);
  }
}
