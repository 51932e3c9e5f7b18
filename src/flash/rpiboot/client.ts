/**
 * `rpiboot`: puts a Raspberry Pi Compute Module / Zero whose boot ROM waits on USB (nRPIBOOT
 * jumper fitted, or no bootable storage) into USB mass-storage mode. It does what the reference
 * host tool does: send the second-stage boot code to the ROM, wait for the device to come back
 * running it, then answer its file requests from the user's usbboot folder until it is done.
 * After that the Pi boots the mass-storage firmware and its eMMC shows up as a drive.
 */
import { EdgekitError } from '../../util/errors.js';
import { noProgress, type Progress } from '../../util/progress.js';
import { BootFolder, type BootFile } from './boot-files.js';
import {
  BOOT_PRODUCT_IDS,
  BOOT_STATUS_SIZE,
  BROADCOM_VENDOR_ID,
  BULK_TIMEOUT_MS,
  CONTROL_IN_TIMEOUT_MS,
  CONTROL_OUT_TIMEOUT_MS,
  FILE_MESSAGE_SIZE,
  FileCommand,
  MAX_BULK_CHUNK,
  VENDOR_IN,
  VENDOR_OUT,
  chipOf,
  decodeFileMessage,
  encodeBootMessage,
  isRomStage,
  lengthSetup,
  parseMetadata,
  secondStageFile,
  vendorInterface,
  type Chip,
} from './protocol.js';
import { UsbTransferError, type UsbBootConnection, type UsbBootTransportFactory, type UsbDeviceInfo } from './transport.js';

export interface RpibootOptions {
  /** Folder with the second-stage files (a copy of usbboot's msd/ or mass-storage-gadget64/). */
  usbbootDir: string;
  /** Defaults to the node-usb transport. */
  transport?: UsbBootTransportFactory;
  /** Longest wait for each step: the device to appear, to re-enumerate, to send its next request. */
  timeoutMs?: number;
  progress?: Progress;
  /** How often the bus is looked at while waiting. */
  pollMs?: number;
  /**
   * Pauses the reference host makes: before opening a new device (the OS is still enumerating it)
   * and before reading the ROM's verdict on the boot code (it checks it first). Tests use 0.
   */
  settleMs?: number;
}

export interface RpibootResult {
  /** USB product id of the boot ROM that answered (0x2763, 0x2764, 0x2711 or 0x2712). */
  product: number;
  chip: Chip;
  /** iSerialNumber string of the second stage, when it has one. */
  serial?: string;
  location: string;
  /** Files sent, in order (the second-stage boot code first). */
  filesSent: string[];
  /** Files the device asked for that the folder does not have. */
  filesMissing: string[];
  /** Names refused without looking (they could leave the folder), with the reason. */
  filesRefused: string[];
  /** "*PROPERTY*VALUE" reports from BCM2711/2712 boot code. */
  metadata: Record<string, string>;
  /** 'done': the device said so; 'disconnected': it went on to boot without saying so. */
  end: 'done' | 'disconnected';
}

const DEFAULT_TIMEOUT_MS = 30_000;
/** A device that keeps coming back to its ROM after taking the boot code is not going anywhere. */
const MAX_ROM_ROUNDS = 3;

export async function rpiboot(opts: RpibootOptions): Promise<RpibootResult> {
  const folder = await BootFolder.open(opts.usbbootDir);
  const transport = opts.transport ?? (await (await import('./node-usb-transport.js')).nodeUsbTransport());
  const ctx: Ctx = {
    folder,
    transport,
    timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    pollMs: opts.pollMs ?? 250,
    settleMs: opts.settleMs ?? 1000,
    progress: opts.progress ?? noProgress,
  };

  ctx.progress({ phase: 'rpiboot', detail: 'waiting for a Raspberry Pi in USB boot mode' });
  let device = await waitForDevice(ctx, () => true);
  if (!device) {
    throw new EdgekitError(
      `no Raspberry Pi in USB boot mode (USB ${hex(BROADCOM_VENDOR_ID)}:${BOOT_PRODUCT_IDS.map(hex).join('/')}) appeared within ${seconds(ctx.timeoutMs)}: fit the nRPIBOOT/EMMC-DISABLE jumper, then connect USB and power`,
    );
  }
  const rom = device;
  const chip = chipOf(rom.productId);
  const filesSent: string[] = [];

  for (let round = 0; isRomStage(device.serialIndex); round++) {
    if (round === MAX_ROM_ROUNDS) {
      throw new EdgekitError(`${device.location}: the device returned to its boot ROM ${round} times; check the boot code in ${folder.dir}`);
    }
    const sent = await bootSecondStage(ctx, device, chip);
    filesSent.push(sent);
    const last = device.serialIndex;
    ctx.progress({ phase: 'rpiboot', detail: `waiting for ${sent} to start` });
    const next = await waitForDevice(ctx, (d) => d.serialIndex !== last);
    if (!next) {
      throw new EdgekitError(`${device.location}: ${sent} was sent but the device did not come back running it within ${seconds(ctx.timeoutMs)}`);
    }
    device = next;
  }

  const served = await serveFiles(ctx, device, chip);
  return { product: rom.productId, chip, location: device.location, ...served, filesSent: [...filesSent, ...served.filesSent] };
}

interface Ctx {
  folder: BootFolder;
  transport: UsbBootTransportFactory;
  timeoutMs: number;
  pollMs: number;
  settleMs: number;
  progress: Progress;
}

function isBootDevice(d: UsbDeviceInfo): boolean {
  return d.vendorId === BROADCOM_VENDOR_ID && BOOT_PRODUCT_IDS.includes(d.productId);
}

/** Looks at the bus until a boot-mode device passing `accept` is there, or the time is up. */
async function waitForDevice(ctx: Ctx, accept: (d: UsbDeviceInfo) => boolean): Promise<UsbDeviceInfo | undefined> {
  const deadline = Date.now() + ctx.timeoutMs;
  for (;;) {
    const found = (await ctx.transport.list()).filter(isBootDevice).filter(accept);
    // Sorted so that with several boards attached the same one is picked every time.
    found.sort((a, b) => (a.location < b.location ? -1 : a.location > b.location ? 1 : 0));
    if (found.length) return found[0];
    if (Date.now() >= deadline) return undefined;
    await sleep(ctx.pollMs);
  }
}

async function openDevice(ctx: Ctx, device: UsbDeviceInfo): Promise<{ conn: UsbBootConnection; bulkOut: number }> {
  await sleep(ctx.settleMs);
  let conn: UsbBootConnection;
  try {
    conn = await ctx.transport.open(device);
  } catch (err) {
    if (err instanceof UsbTransferError && err.kind === 'access') {
      throw new EdgekitError(`${device.location}: permission denied opening the USB device (run as root or add the udev rule in docs/rpiboot.md)`);
    }
    throw usbError(device, 'open', err);
  }
  const { interfaceNumber, bulkOutEndpoint } = vendorInterface(conn.interfaceCount);
  try {
    await conn.claimInterface(interfaceNumber);
  } catch (err) {
    await conn.close().catch(() => {});
    throw usbError(device, `claim interface ${interfaceNumber}`, err);
  }
  return { conn, bulkOut: bulkOutEndpoint };
}

/** ROM stage: boot message, then the boot code, then the ROM's status word. */
async function bootSecondStage(ctx: Ctx, device: UsbDeviceInfo, chip: Chip): Promise<string> {
  const name = secondStageFile(chip);
  const file = await ctx.folder.find(name, chip);
  if (!file) throw new EdgekitError(`${ctx.folder.dir}: ${name} not found (the ${chip.toUpperCase()} boot ROM at ${device.location} needs it)`);
  try {
    const { conn, bulkOut } = await openDevice(ctx, device);
    try {
      ctx.progress({ phase: 'rpiboot', detail: `sending ${name}` });
      const message = encodeBootMessage(file.size);
      await hostWrite(conn, bulkOut, message.length, async () => message, device, 'boot message');
      await hostWrite(conn, bulkOut, file.size, (o, l) => file.read(o, l), device, name, ctx.progress);
      await sleep(ctx.settleMs);
      let status: Uint8Array | undefined;
      try {
        status = await conn.controlIn(lengthSetup(VENDOR_IN, BOOT_STATUS_SIZE), BOOT_STATUS_SIZE, CONTROL_IN_TIMEOUT_MS);
      } catch (err) {
        // The reference host carries on too: a ROM that already jumped to the boot code is gone.
        if (!(err instanceof UsbTransferError)) throw err;
      }
      if (status && status.length >= BOOT_STATUS_SIZE) {
        const code = Buffer.from(status).readInt32LE(0);
        if (code !== 0) throw new EdgekitError(`${device.location}: the boot ROM refused ${file.origin} (status ${code})`);
      }
    } finally {
      await conn.close().catch(() => {});
    }
  } finally {
    await file.close();
  }
  return name;
}

/**
 * Sends `size` bytes the way the device expects them: a vendor request announcing the length,
 * then bulk OUT in pieces. A zero size is the protocol's "nothing" answer (no such file, ack).
 */
async function hostWrite(
  conn: UsbBootConnection,
  endpoint: number,
  size: number,
  read: (offset: number, length: number) => Promise<Buffer>,
  device: UsbDeviceInfo,
  what: string,
  progress: Progress = noProgress,
): Promise<void> {
  if (size > 0x7fffffff) throw new EdgekitError(`${what}: ${size} bytes is more than the usbboot protocol can send`);
  try {
    await conn.controlOut(lengthSetup(VENDOR_OUT, size), new Uint8Array(0), CONTROL_OUT_TIMEOUT_MS);
    for (let offset = 0; offset < size; ) {
      const chunk = await read(offset, Math.min(MAX_BULK_CHUNK, size - offset));
      const sent = await conn.bulkOut(endpoint, chunk, BULK_TIMEOUT_MS);
      if (sent !== chunk.length) throw new UsbTransferError(`short write (${sent} of ${chunk.length} bytes)`, 'io');
      offset += sent;
      progress({ phase: 'rpiboot', detail: what, done: offset, total: size });
    }
  } catch (err) {
    if (err instanceof EdgekitError) throw err;
    throw usbError(device, `sending ${what}`, err);
  }
}

function answerNothing(conn: UsbBootConnection, endpoint: number, device: UsbDeviceInfo, what: string): Promise<void> {
  return hostWrite(conn, endpoint, 0, async () => Buffer.alloc(0), device, what);
}

/** Second stage: answer GetFileSize / ReadFile until Done (or the device leaves to boot on). */
async function serveFiles(ctx: Ctx, device: UsbDeviceInfo, chip: Chip): Promise<Omit<RpibootResult, 'product' | 'chip' | 'location'>> {
  const { conn, bulkOut } = await openDevice(ctx, device);
  const filesSent: string[] = [];
  const filesMissing: string[] = [];
  const filesRefused: string[] = [];
  const metadata: Record<string, string> = {};
  // GetFileSize opens the file that the following ReadFile sends, as in the reference host.
  let pending: BootFile | undefined;
  let end: RpibootResult['end'] = 'disconnected';
  try {
    const serial = await conn.serialNumber().catch(() => undefined);
    ctx.progress({ phase: 'rpiboot', detail: `serving files to ${serial ?? device.location}` });
    let lastRequest = Date.now();
    for (;;) {
      let bytes: Uint8Array;
      try {
        bytes = await conn.controlIn(lengthSetup(VENDOR_IN, FILE_MESSAGE_SIZE), FILE_MESSAGE_SIZE, Math.min(CONTROL_IN_TIMEOUT_MS, ctx.timeoutMs));
      } catch (err) {
        if (!(err instanceof UsbTransferError)) throw err;
        if (err.kind === 'no-device' || err.kind === 'io') break;
        if (err.kind !== 'timeout') throw usbError(device, 'reading a file request', err);
        if (Date.now() - lastRequest >= ctx.timeoutMs) {
          throw new EdgekitError(`${device.location}: the second stage sent no file request within ${seconds(ctx.timeoutMs)}`);
        }
        await sleep(ctx.pollMs);
        continue;
      }
      lastRequest = Date.now();
      const msg = decodeFileMessage(bytes);
      if (msg.name === '') {
        // An empty name also means done; the reference host acknowledges it.
        await answerNothing(conn, bulkOut, device, 'end of transfer');
        end = 'done';
        break;
      }
      if (msg.name.startsWith('*') && msg.command !== FileCommand.Done) {
        const kv = parseMetadata(msg.name);
        if (kv) metadata[kv[0]] = kv[1];
        await answerNothing(conn, bulkOut, device, 'metadata');
        continue;
      }
      if (msg.command === FileCommand.GetFileSize) {
        await pending?.close();
        let refused = false;
        pending = await ctx.folder.find(msg.name, chip, (why) => {
          refused = true;
          filesRefused.push(`${msg.name}: ${why}`);
        });
        if (pending) {
          if (pending.size > 0x7fffffff) throw new EdgekitError(`${pending.origin}: too large for USB boot`);
          await conn.controlOut(lengthSetup(VENDOR_OUT, pending.size), new Uint8Array(0), CONTROL_OUT_TIMEOUT_MS).catch((e) => {
            throw usbError(device, `answering the size of ${msg.name}`, e);
          });
        } else {
          if (!refused) filesMissing.push(msg.name);
          await answerNothing(conn, bulkOut, device, `no ${msg.name}`);
        }
      } else if (msg.command === FileCommand.ReadFile) {
        if (pending) {
          const file = pending;
          pending = undefined;
          try {
            await hostWrite(conn, bulkOut, file.size, (o, l) => file.read(o, l), device, file.name, ctx.progress);
          } finally {
            await file.close();
          }
          filesSent.push(file.name);
        } else {
          // Nothing was opened by a GetFileSize before it: the protocol's empty answer.
          await answerNothing(conn, bulkOut, device, `no ${msg.name}`);
        }
      } else if (msg.command === FileCommand.Done) {
        end = 'done';
        break;
      } else {
        throw new EdgekitError(`${device.location}: unknown usbboot request ${msg.command} for "${msg.name}"`);
      }
    }
    return { serial, filesSent, filesMissing, filesRefused, metadata, end };
  } finally {
    await pending?.close();
    await conn.close().catch(() => {});
  }
}

function usbError(device: UsbDeviceInfo, what: string, err: unknown): EdgekitError {
  const why = err instanceof Error ? err.message : String(err);
  return new EdgekitError(`${device.location}: USB ${what} failed: ${why}`);
}

function hex(n: number): string {
  return n.toString(16).padStart(4, '0');
}

function seconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
}
