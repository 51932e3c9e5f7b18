/**
 * One power cycle of a Raspberry Pi 3 under QEMU's raspi3b machine. QEMU does not emulate the
 * VideoCore firmware: it loads U-Boot itself (-kernel) and hands it the device tree (-dtb) in
 * place of the firmware, so config.txt and start.elf are not exercised here, U-Boot onwards is.
 *
 * -no-reboot turns a guest reset into QEMU exiting: one run is one power cycle. A run also ends
 * when `stopAt` appears on the console (the guest's `poweroff` halts without QEMU exiting).
 */
import { spawn } from 'node:child_process';

export interface Raspi3bOptions {
  image: string; // SD card image (power-of-two size)
  ubootBin: string;
  dtb: string; // bcm2837-rpi-3-b.dtb
  stopAt: RegExp;
  /** Safety net for a hung guest, not a performance limit. */
  timeoutMs?: number;
}

export interface Raspi3bRun {
  /** The mini UART (serial1, U-Boot's and Linux's console on the Pi 3). */
  console: string;
  end: 'stopAt' | 'exit' | 'timeout';
  exitCode: number | null;
}

export function runRaspi3b(opts: Raspi3bOptions): Promise<Raspi3bRun> {
  const args = [
    '-M', 'raspi3b', '-m', '1G',
    '-kernel', opts.ubootBin,
    '-dtb', opts.dtb,
    '-drive', `file=${opts.image},if=sd,format=raw`,
    // UART0 (PL011) is Bluetooth's on the Pi 3; the console is the mini UART, QEMU's second serial.
    '-serial', 'null', '-serial', 'stdio',
    '-display', 'none', '-monitor', 'none',
    '-no-reboot',
  ];
  return new Promise((resolve, reject) => {
    const qemu = spawn('qemu-system-aarch64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let end: Raspi3bRun['end'] = 'exit';
    const stop = (why: Raspi3bRun['end']) => {
      end = why;
      qemu.kill('SIGKILL');
    };
    const timer = setTimeout(() => stop('timeout'), opts.timeoutMs ?? 600_000);
    qemu.stdout.on('data', (b: Buffer) => {
      out += b.toString('latin1');
      if (end === 'exit' && opts.stopAt.test(out)) stop('stopAt');
    });
    qemu.stderr.on('data', (b: Buffer) => (out += b.toString('latin1')));
    qemu.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    qemu.on('close', (code) => {
      clearTimeout(timer);
      resolve({ console: out, end, exitCode: code });
    });
  });
}
