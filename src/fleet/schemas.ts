/** Request bodies the server accepts, checked with zod before anything reads them. */
import { z } from 'zod';
import { REPORT_STATES } from './protocol/messages.js';

const id = z.string().regex(/^[A-Za-z0-9._:-]{1,128}$/, '1-128 letters, digits or . _ : -');
const version = z.string().min(1).max(128).regex(/^[!-~]+$/, 'printable ASCII without spaces');
const name = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'lower-case letters, digits, . _ - (1-64)');
const tag = z.string().regex(/^[A-Za-z0-9._:=-]{1,64}$/, 'tags: 1-64 letters, digits or . _ : = -');
const slot = z.enum(['a', 'b']);
const short = z.string().max(1024);

const maintenanceWindow = z.strictObject({
  start: z.string().max(5),
  end: z.string().max(5),
  days: z.array(z.enum(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'])).max(7).default([]),
  timeZone: z.string().min(1).max(64).optional(),
});

export const helloBody = z.strictObject({ deviceId: id });
export const authBody = z.strictObject({
  deviceId: id,
  publicKey: z.string().min(1).max(4096),
  nonce: z.string().min(1).max(128),
  signature: z.string().min(1).max(256),
  provisioningToken: z.string().min(1).max(4096).optional(),
});
const publicKey = z.string().min(1).max(4096);
const signature = z.string().min(1).max(256);
export const rotateKeyBody = z.strictObject({
  deviceId: id,
  nonce: z.string().min(1).max(128),
  publicKey,
  signature,
  newPublicKey: publicKey,
  newSignature: signature,
});
export const checkInBody = z.strictObject({
  board: z.string().min(1).max(128),
  version,
  previousVersion: version.optional(),
  slot,
  // Partial: a boot chain may know only the running slot's state (z.record over an enum wants every key).
  slotState: z.partialRecord(slot, short).optional(),
});
export const reportBody = z.strictObject({
  id: z.string().min(1).max(128),
  state: z.enum(REPORT_STATES),
  version: version.optional(),
  running: version,
  slot,
  reason: short.optional(),
});

export const channelBody = z.strictObject({ name });
export const releaseBody = z.strictObject({ version, channel: name, board: z.string().min(1).max(128).optional() });
export const rolloutBody = z.strictObject({
  version,
  channel: name,
  filter: z.strictObject({ tags: z.array(tag).max(32).optional(), board: z.string().min(1).max(128).optional() }).optional(),
  stages: z.array(z.strictObject({ percent: z.number().gt(0).max(100), waitSeconds: z.number().int().min(0).max(365 * 86400).default(0) })).min(1).max(20),
  maxFailureRatio: z.number().min(0).max(1).default(0.05),
  minSuccessRatio: z.number().min(0).max(1).default(0.9),
  // As objects, or as the text `edgekit fleet rollouts create --window` takes (the dashboard sends
  // what the operator typed, so the one parser in windows.ts reads it).
  windows: z.array(z.union([maintenanceWindow, z.string().min(1).max(100)])).max(32).default([]),
});
/** What a rollout would cost: the devices it would target, as for a rollout. */
export const rolloutCostBody = z.strictObject({
  version,
  channel: name,
  filter: z.strictObject({ tags: z.array(tag).max(32).optional(), board: z.string().min(1).max(128).optional() }).optional(),
});
export const tagsBody = z.strictObject({ tags: z.array(tag).max(32) });
/** An operator registers a device by its public key (pre-authorised), or sets a device's key. */
export const deviceRegisterBody = z.strictObject({
  id,
  publicKey,
  channel: name.default('stable'),
  tags: z.array(tag).max(32).default([]),
});
export const deviceKeyBody = z.strictObject({ publicKey });
export const deviceChannelBody = z.strictObject({ channel: name });
export const tokenBody = z.strictObject({ name: z.string().min(1).max(64), scope: z.enum(['read', 'operator', 'admin']) });
export const provisioningBody = z.strictObject({
  channel: name.default('stable'),
  tags: z.array(tag).max(32).default([]),
  expiresInSeconds: z.number().int().positive().max(366 * 86400).nullable().default(7 * 86400),
});
