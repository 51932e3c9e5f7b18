/**
 * The Broadcom USB boot protocol as the Raspberry Pi usbboot host tool speaks it: the ROM takes a
 * boot message and the second-stage boot code; the second stage then asks the host for files.
 * Numbers here follow that tool's main.c (the reference host implementation); all integers on
 * the wire are little-endian 32-bit, as the VideoCore and ARM cores read them.
 */
import type { ControlSetup } from './transport.js';

export const BROADCOM_VENDOR_ID = 0x0a5c;

/** Boot ROM product ids: BCM2835/6/7 (two ids across revisions), BCM2711, BCM2712. */
export const BOOT_PRODUCT_IDS: readonly number[] = [0x2763, 0x2764, 0x2711, 0x2712];

export type Chip = 'bcm2835' | 'bcm2711' | 'bcm2712';

export function chipOf(productId: number): Chip {
  if (productId === 0x2711) return 'bcm2711';
  if (productId === 0x2712) return 'bcm2712';
  return 'bcm2835';
}

/** The file the ROM runs as second stage, by chip. */
export function secondStageFile(chip: Chip): string {
  return chip === 'bcm2711' ? 'bootcode4.bin' : chip === 'bcm2712' ? 'bootcode5.bin' : 'bootcode.bin';
}

/** The folder prefix of a chip's files inside a bootfiles.bin archive. */
export function bootfilesPrefix(chip: Chip): string {
  return chip === 'bcm2711' ? '2711' : chip === 'bcm2712' ? '2712' : '2710';
}

/**
 * The ROM enumerates with iSerialNumber 0 (BCM2835/6/7) or 3 (BCM2711/2712); a running second
 * stage uses another index. The index, not the string, is what the host tool goes by.
 */
export function isRomStage(serialIndex: number): boolean {
  return serialIndex === 0 || serialIndex === 3;
}

/**
 * Interface and bulk endpoints: one interface means the vendor interface is 0 with bulk OUT on
 * endpoint 1; BCM2837 may come up with a mass-storage interface first, and then the vendor
 * interface is 1 with bulk OUT on endpoint 3.
 */
export function vendorInterface(interfaceCount: number): { interfaceNumber: number; bulkOutEndpoint: number } {
  return interfaceCount === 1 ? { interfaceNumber: 0, bulkOutEndpoint: 1 } : { interfaceNumber: 1, bulkOutEndpoint: 3 };
}

/** bmRequestType: vendor request to the device, host-to-device and device-to-host. */
export const VENDOR_OUT = 0x40;
export const VENDOR_IN = 0xc0;

/**
 * Every message is announced with a vendor request 0 whose wValue/wIndex carry a 32-bit length
 * (low and high 16 bits); the bytes then follow as bulk OUT (host to device) or as the data stage
 * of the same control transfer (device to host).
 */
export function lengthSetup(requestType: number, length: number): ControlSetup {
  return { requestType, request: 0, value: length & 0xffff, index: (length >>> 16) & 0xffff };
}

/** Bulk writes are cut into pieces of at most this size, as the reference host does. */
export const MAX_BULK_CHUNK = 16 * 1024;

/** Timeouts the reference host uses per transfer. */
export const CONTROL_OUT_TIMEOUT_MS = 1000;
export const BULK_TIMEOUT_MS = 5000;
export const CONTROL_IN_TIMEOUT_MS = 20_000;

/** struct { int32 length; uint8 signature[20]; }: 24 bytes. */
export const BOOT_MESSAGE_SIZE = 24;
export const BOOT_SIGNATURE_SIZE = 20;

export function encodeBootMessage(secondStageLength: number, signature?: Uint8Array): Buffer {
  const msg = Buffer.alloc(BOOT_MESSAGE_SIZE);
  msg.writeInt32LE(secondStageLength, 0);
  if (signature) {
    if (signature.length !== BOOT_SIGNATURE_SIZE) throw new RangeError(`boot signature must be ${BOOT_SIGNATURE_SIZE} bytes`);
    msg.set(signature, 4);
  }
  return msg;
}

/** The ROM answers the second stage with an int32 status read back by control IN; 0 is success. */
export const BOOT_STATUS_SIZE = 4;

/** struct { int32 command; char fname[256]; }: 260 bytes, fname NUL-terminated. */
export const FILE_MESSAGE_SIZE = 260;
export const FILE_NAME_FIELD = 256;

export enum FileCommand {
  GetFileSize = 0,
  ReadFile = 1,
  Done = 2,
}

export interface FileMessage {
  command: number;
  name: string;
}

export function decodeFileMessage(bytes: Uint8Array): FileMessage {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 4) return { command: -1, name: '' };
  const field = buf.subarray(4, 4 + FILE_NAME_FIELD);
  const nul = field.indexOf(0);
  return { command: buf.readInt32LE(0), name: field.subarray(0, nul < 0 ? field.length : nul).toString('latin1') };
}

/**
 * Names starting with '*' are not files: BCM2711/2712 boot code reports "*PROPERTY*VALUE" pairs
 * (serial number, MAC address, ...) this way; the host acknowledges them with an empty answer.
 */
export function parseMetadata(name: string): [string, string] | undefined {
  const parts = name.slice(1).split('*');
  if (!parts[0] || parts[1] === undefined) return undefined;
  return [parts[0], parts[1]];
}
