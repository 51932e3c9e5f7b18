/**
 * The device <-> fleet server protocol: paths and message shapes. Shared by the server, the update
 * agent and the simulated devices in the tests, so there is one definition of what goes on the wire.
 * Pure types and constants: the device bundle imports this, so it must pull in nothing heavy.
 *
 * A device proves who it is with its own ed25519 key:
 *   1. POST /v1/device/hello {deviceId}                      -> {nonce}
 *   2. POST /v1/device/auth  {deviceId, publicKey, nonce, signature, provisioningToken?}
 *        -> 200 {status:'accepted', token, expiresIn} or 202 {status:'pending'} (waits for an operator)
 *      The signature covers authMessage(deviceId, nonce). The first auth of a device id binds its
 *      public key; later auths with another key are refused, so a device cannot act as another.
 *   3. Authorization: Bearer <token> on check-in, reports and the release repository's files when
 *      the server serves them (GET /v1/device/repo/metadata/..., /v1/device/repo/targets/...).
 *
 * Key rotation, started by the device: a nonce from hello, then
 *   POST /v1/device/rotate-key {deviceId, nonce, publicKey, signature, newPublicKey, newSignature}
 *        -> 200 {status:'rotated'}
 *   Both keys sign rotateKeyMessage(deviceId, nonce, newPublicKey): the old one says "replace me by
 *   this key", the new one proves the device holds it. Tokens issued before the change are refused
 *   from then on. Asking again after the server made the change (the answer was lost) is answered
 *   'rotated' as long as the new key signs, so a device can simply retry. An operator can also set a
 *   device's key (a device that lost its key, a replaced board): same effect.
 */

export const DEVICE_PATHS = {
  hello: '/v1/device/hello',
  auth: '/v1/device/auth',
  rotateKey: '/v1/device/rotate-key',
  checkIn: '/v1/device/check-in',
  reports: '/v1/device/reports',
  /** The release repository (metadata/ and targets/ under it), when the server serves one. */
  repo: '/v1/device/repo/',
} as const;

/** The bytes a device signs: a fixed context string so a signature is never valid for anything else. */
export function authMessage(deviceId: string, nonce: string): Buffer {
  return Buffer.from(`edgekit-fleet-auth-v1\n${deviceId}\n${nonce}`, 'utf8');
}

/** The bytes both keys sign to replace the device's key by `newPublicKey` (SPKI PEM). */
export function rotateKeyMessage(deviceId: string, nonce: string, newPublicKey: string): Buffer {
  return Buffer.from(`edgekit-fleet-rotate-key-v1\n${deviceId}\n${nonce}\n${newPublicKey.replace(/\s+/g, '')}`, 'utf8');
}

export interface HelloRequest {
  deviceId: string;
}
export interface HelloResponse {
  nonce: string;
}

export interface AuthRequest {
  deviceId: string;
  /** SPKI PEM of the device's ed25519 public key. */
  publicKey: string;
  nonce: string;
  /** base64 ed25519 signature of authMessage(deviceId, nonce). */
  signature: string;
  /** From the config partition's provisioning-token file: pre-authorises a new device. */
  provisioningToken?: string;
}
export interface RotateKeyRequest {
  deviceId: string;
  nonce: string;
  /** The key the server knows the device by now (SPKI PEM). */
  publicKey: string;
  /** base64 signature by that key of rotateKeyMessage(deviceId, nonce, newPublicKey). */
  signature: string;
  newPublicKey: string;
  /** base64 signature by the new key of the same message. */
  newSignature: string;
}
export interface RotateKeyResponse {
  status: 'rotated';
}

export type AuthResponse = { status: 'accepted'; token: string; expiresIn: number } | { status: 'pending' };

export type SlotName = 'a' | 'b';

export interface CheckInRequest {
  board: string;
  /** The release the device runs. */
  version: string;
  /** The release it ran before (after an update). */
  previousVersion?: string;
  slot: SlotName;
  /** The bootloader's view of the slots, free text per slot (e.g. 'good', 'trying 2'). */
  slotState?: Partial<Record<SlotName, string>>;
}

export interface OfferedRelease {
  version: string;
  channel: string;
  rolloutId: string;
}
/**
 * Where the signed release repository is. URLs may be relative to the fleet server's URL. The
 * device verifies everything it fetches from there against the root keys its image trusts: the
 * server's word only chooses among signed releases.
 */
export interface RepositoryLocation {
  /** The repository: metadata/ and targets/ under it. */
  url: string;
  /** Where targets/ (the payloads) are instead, e.g. a static host or CDN holding a copy. */
  targetsUrl?: string;
}

export interface CheckInResponse {
  /** The release to install, or null: stay where you are. */
  release: OfferedRelease | null;
  /** With a release: where to fetch it. Absent: the repository the device's configuration names. */
  repository?: RepositoryLocation;
}

/** The agent's report states (src/ota/agent/reports.ts). */
export const REPORT_STATES = ['checking', 'downloading', 'installing', 'rebooting', 'committed', 'rolled-back', 'failed'] as const;
export type ReportState = (typeof REPORT_STATES)[number];

export interface ReportRequest {
  /** Chosen by the device, unique per device: a report sent twice (retry, replay) counts once. */
  id: string;
  state: ReportState;
  /** The release concerned. */
  version?: string;
  /** What the device runs now. */
  running: string;
  slot: SlotName;
  reason?: string;
}
export interface ReportResponse {
  /** True when this id was seen before: nothing changed. */
  duplicate: boolean;
}

export interface ErrorResponse {
  error: string;
}
