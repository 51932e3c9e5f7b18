/**
 * GUIDs as they are stored on disk (UEFI spec, appendix A): the first three fields little-endian,
 * the last two (8 bytes) in written order. Text form is upper-case 8-4-4-4-12.
 */
import { EdgekitError } from '../util/errors.js';

const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isGuid(text: string): boolean {
  return GUID_RE.test(text);
}

/** Encodes `text` into 16 bytes at `buf[offset]`; `what` names the field in the error. */
export function writeGuid(buf: Buffer, offset: number, text: string, what: string): void {
  if (!isGuid(text)) throw new EdgekitError(`${what}: not a GUID: "${text}"`);
  const hex = text.replace(/-/g, '');
  const bytes = Buffer.from(hex, 'hex');
  buf.writeUInt32LE(bytes.readUInt32BE(0), offset);
  buf.writeUInt16LE(bytes.readUInt16BE(4), offset + 4);
  buf.writeUInt16LE(bytes.readUInt16BE(6), offset + 6);
  bytes.copy(buf, offset + 8, 8, 16);
}

export function readGuid(buf: Buffer, offset: number): string {
  const a = buf.readUInt32LE(offset).toString(16).padStart(8, '0');
  const b = buf.readUInt16LE(offset + 4).toString(16).padStart(4, '0');
  const c = buf.readUInt16LE(offset + 6).toString(16).padStart(4, '0');
  const d = buf.subarray(offset + 8, offset + 10).toString('hex');
  const e = buf.subarray(offset + 10, offset + 16).toString('hex');
  return `${a}-${b}-${c}-${d}-${e}`.toUpperCase();
}

export const ZERO_GUID = '00000000-0000-0000-0000-000000000000';
