/**
 * A simulated Raspberry Pi in USB boot mode, behind the same transport interface the real
 * node-usb transport implements. It speaks the device side of the Broadcom usbboot protocol at
 * the level of control and bulk transfers, written from the reference host tool's description
 * (raspberrypi/usbboot main.c) and deliberately sharing no code with src/flash/rpiboot/:
 *
 *  ROM stage (iSerialNumber index 0, or 3 on BCM2711/2712):
 *    vendor OUT request 0 (bmRequestType 0x40), wValue/wIndex = 24 (low/high 16 bits), no data;
 *    24 bytes bulk OUT: int32le length + 20-byte signature;
 *    vendor OUT request 0 announcing `length`; `length` bytes bulk OUT (the boot code);
 *    vendor IN request 0 (0xc0) for 4 bytes: int32le status, 0 = accepted.
 *    Then the device drops off the bus and comes back running the boot code.
 *  Second stage (another iSerialNumber index): vendor IN request 0 for 260 bytes returns
 *    { int32le command; char name[256] } (0 GetFileSize, 1 ReadFile, 2 Done). The host answers
 *    GetFileSize with a vendor OUT request whose wValue/wIndex carry the size and no bulk data;
 *    ReadFile with a vendor OUT request announcing the length followed by that many bulk OUT
 *    bytes; a missing file, a metadata report ("*KEY*VALUE") or an empty name with a zero length.
 * Bulk OUT goes to endpoint 1 of interface 0, or endpoint 3 of interface 1 when the device shows
 * two interfaces (a BCM2837 that comes up with mass storage first).
 *
 * Anything else is a protocol violation: it is recorded in `violations` and fails the transfer.
 */
import type { ControlSetup, UsbBootConnection, UsbBootTransportFactory, UsbDeviceInfo } from '../../src/flash/rpiboot/transport.js';
import { UsbTransferError } from '../../src/flash/rpiboot/transport.js';

export interface SimRequest {
  command: number;
  name: string;
}

export interface SimOptions {
  /** ROM product id: 0x2763/0x2764 (BCM2835/6/7), 0x2711, 0x2712. */
  productId: number;
  interfaceCount?: 1 | 2;
  /** Defaults: 0 for BCM2835/6/7, 3 for BCM2711/2712. */
  romSerialIndex?: number;
  secondStageSerialIndex?: number;
  /** iSerialNumber string of the second stage. */
  serial?: string;
  /** false: the ROM takes the boot code and never comes back. */
  reenumerate?: boolean;
  /** Status word the ROM answers after the boot code. */
  romStatus?: number;
  /** What the second stage asks for, in order; when the list runs out the device leaves. */
  requests: SimRequest[];
  /** The second stage never sends a request: every read times out. */
  silentSecondStage?: boolean;
  /** Other devices on the bus, to check they are left alone. */
  bystanders?: UsbDeviceInfo[];
}

/** What the host answered to one second-stage request. */
export interface SimAnswer {
  request: SimRequest;
  /** The 32-bit value of the answering vendor request (the size, or the length announced). */
  announced: number;
  /** The bytes that followed in bulk (ReadFile only). */
  data: Buffer;
}

type Phase =
  | { at: 'rom-announce-message' }
  | { at: 'rom-message'; expected: number; got: Buffer[] }
  | { at: 'rom-announce-code' }
  | { at: 'rom-code'; expected: number; got: Buffer[] }
  | { at: 'rom-status' }
  | { at: 'stage2-idle' }
  | { at: 'stage2-answer'; request: SimRequest }
  | { at: 'stage2-data'; answer: SimAnswer; expected: number; got: Buffer[] }
  | { at: 'gone' };

const VENDOR = 0x0a5c;

export class UsbbootSim implements UsbBootTransportFactory {
  readonly violations: string[] = [];
  /** Every transfer as one line, in order, for order checks and failure messages. */
  readonly log: string[] = [];
  bootMessage?: { length: number; signature: Buffer; size: number };
  secondStage?: Buffer;
  /** Sizes of the bulk OUT transfers that carried the boot message and the boot code. */
  readonly romBulkSizes: number[] = [];
  readonly answers: SimAnswer[] = [];
  /** Interface claimed and bulk endpoint used, per stage. */
  readonly claims: number[] = [];
  readonly bulkEndpoints = new Set<number>();
  opens = 0;

  private stage: 'rom' | 'second' | 'gone' = 'rom';
  private phase: Phase = { at: 'rom-announce-message' };
  private next = 0;
  private readonly o: Required<Omit<SimOptions, 'serial'>> & { serial?: string };

  constructor(options: SimOptions) {
    const bcm2711 = options.productId === 0x2711 || options.productId === 0x2712;
    this.o = {
      interfaceCount: 1,
      romSerialIndex: bcm2711 ? 3 : 0,
      secondStageSerialIndex: 1,
      reenumerate: true,
      romStatus: 0,
      silentSecondStage: false,
      bystanders: [],
      ...options,
    };
  }

  private current(): UsbDeviceInfo | undefined {
    if (this.stage === 'gone') return undefined;
    const serialIndex = this.stage === 'rom' ? this.o.romSerialIndex : this.o.secondStageSerialIndex;
    return { vendorId: VENDOR, productId: this.o.productId, serialIndex, location: 'sim 1-1' };
  }

  async list(): Promise<UsbDeviceInfo[]> {
    const d = this.current();
    return [...this.o.bystanders, ...(d ? [d] : [])];
  }

  async open(info: UsbDeviceInfo): Promise<UsbBootConnection> {
    const d = this.current();
    if (!d || info.vendorId !== VENDOR || info.serialIndex !== d.serialIndex) {
      throw new UsbTransferError(`open ${info.location}: no such device`, 'no-device');
    }
    this.opens++;
    this.log.push(`open ${this.stage}`);
    const stageAtOpen = this.stage;
    let claimed: number | undefined;
    const alive = () => {
      if (this.stage !== stageAtOpen) throw new UsbTransferError('LIBUSB_TRANSFER_NO_DEVICE', 'no-device');
    };
    const sim = this;
    return {
      interfaceCount: this.o.interfaceCount,
      async serialNumber() {
        alive();
        return stageAtOpen === 'second' ? sim.o.serial : undefined;
      },
      async claimInterface(n) {
        alive();
        const want = sim.o.interfaceCount === 1 ? 0 : 1;
        if (n !== want) sim.violate(`claimed interface ${n}, the vendor interface is ${want}`);
        claimed = n;
        sim.claims.push(n);
        sim.log.push(`claim ${n}`);
      },
      async controlOut(setup, data) {
        alive();
        sim.log.push(`control-out ${fmt(setup)} data=${data.length}`);
        if (claimed === undefined) sim.violate('control transfer before claiming the interface');
        if (setup.requestType !== 0x40 || setup.request !== 0) sim.violate(`control OUT ${fmt(setup)}: want vendor request 0 (0x40/0)`);
        if (data.length !== 0) sim.violate(`control OUT with ${data.length} data bytes: lengths travel in wValue/wIndex`);
        sim.onAnnounce(setup.value | (setup.index << 16));
      },
      async controlIn(setup, length) {
        alive();
        sim.log.push(`control-in ${fmt(setup)} length=${length}`);
        if (setup.requestType !== 0xc0 || setup.request !== 0) sim.violate(`control IN ${fmt(setup)}: want vendor request 0 (0xc0/0)`);
        if ((setup.value | (setup.index << 16)) !== length) sim.violate(`control IN wValue/wIndex ${setup.value}/${setup.index} do not carry its length ${length}`);
        return sim.onRead(length);
      },
      async bulkOut(endpoint, data) {
        alive();
        sim.log.push(`bulk-out ep${endpoint} ${data.length}`);
        const want = sim.o.interfaceCount === 1 ? 1 : 3;
        if (endpoint !== want) sim.violate(`bulk OUT on endpoint ${endpoint}, want ${want}`);
        sim.bulkEndpoints.add(endpoint);
        sim.onBulk(Buffer.from(data));
        return data.length;
      },
      async close() {
        sim.log.push(`close ${stageAtOpen}`);
      },
    };
  }

  private violate(what: string): never {
    this.violations.push(what);
    throw new UsbTransferError(`protocol violation: ${what}`, 'other');
  }

  private onAnnounce(length: number): void {
    const p = this.phase;
    if (p.at === 'rom-announce-message') {
      if (length !== 24) this.violate(`boot message announced as ${length} bytes, want 24`);
      this.phase = { at: 'rom-message', expected: 24, got: [] };
    } else if (p.at === 'rom-announce-code') {
      if (length !== this.bootMessage!.length) this.violate(`boot code announced as ${length} bytes, the boot message said ${this.bootMessage!.length}`);
      this.phase = { at: 'rom-code', expected: length, got: [] };
    } else if (p.at === 'stage2-answer') {
      const answer: SimAnswer = { request: p.request, announced: length, data: Buffer.alloc(0) };
      this.answers.push(answer);
      if (p.request.command === 1 && length > 0) this.phase = { at: 'stage2-data', answer, expected: length, got: [] };
      else if (p.request.name === '') {
        if (length !== 0) this.violate(`end of transfer answered with length ${length}`);
        this.stage = 'gone';
        this.phase = { at: 'gone' };
      } else this.phase = { at: 'stage2-idle' };
    } else {
      this.violate(`vendor OUT request (length ${length}) while ${p.at}`);
    }
  }

  private onBulk(data: Buffer): void {
    const p = this.phase;
    if (p.at === 'rom-message' || p.at === 'rom-code') this.romBulkSizes.push(data.length);
    if (p.at === 'rom-message' || p.at === 'rom-code' || p.at === 'stage2-data') {
      p.got.push(data);
      const total = p.got.reduce((n, b) => n + b.length, 0);
      if (total > p.expected) this.violate(`${total} bulk bytes, ${p.expected} were announced`);
      if (total < p.expected) return;
      const all = Buffer.concat(p.got);
      if (p.at === 'rom-message') {
        this.bootMessage = { length: all.readInt32LE(0), signature: all.subarray(4, 24), size: all.length };
        this.phase = { at: 'rom-announce-code' };
      } else if (p.at === 'rom-code') {
        this.secondStage = all;
        this.phase = { at: 'rom-status' };
      } else {
        p.answer.data = all;
        this.phase = { at: 'stage2-idle' };
      }
      return;
    }
    this.violate(`${data.length} bulk bytes while ${p.at}`);
  }

  private onRead(length: number): Uint8Array {
    const p = this.phase;
    if (p.at === 'rom-status') {
      if (length !== 4) this.violate(`status read of ${length} bytes, want 4`);
      const status = Buffer.alloc(4);
      status.writeInt32LE(this.o.romStatus);
      // The ROM jumps into the boot code: this device is gone, a new one may come.
      this.stage = this.o.reenumerate && this.o.romStatus === 0 ? 'second' : 'gone';
      this.phase = this.stage === 'second' ? { at: 'stage2-idle' } : { at: 'gone' };
      return status;
    }
    if (p.at === 'stage2-idle') {
      if (length !== 260) this.violate(`file request read of ${length} bytes, want 260`);
      if (this.o.silentSecondStage) throw new UsbTransferError('LIBUSB_TRANSFER_TIMED_OUT', 'timeout');
      const request = this.o.requests[this.next++];
      if (!request) {
        // Script exhausted: the second stage boots on and leaves the bus.
        this.stage = 'gone';
        this.phase = { at: 'gone' };
        throw new UsbTransferError('LIBUSB_TRANSFER_NO_DEVICE', 'no-device');
      }
      const msg = Buffer.alloc(260);
      msg.writeInt32LE(request.command, 0);
      msg.write(request.name, 4, 255, 'latin1');
      // An empty name ends the transfer too, and the host acknowledges it like any other answer.
      if (request.command === 2 && request.name !== '') {
        this.stage = 'gone';
        this.phase = { at: 'gone' };
      } else {
        this.phase = { at: 'stage2-answer', request };
      }
      return msg;
    }
    this.violate(`control IN of ${length} bytes while ${p.at}`);
  }
}

function fmt(s: ControlSetup): string {
  const h = (n: number, w: number) => n.toString(16).padStart(w, '0');
  return `${h(s.requestType, 2)}/${h(s.request, 2)} value=${h(s.value, 4)} index=${h(s.index, 4)}`;
}
