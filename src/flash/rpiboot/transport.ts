/**
 * What the usbboot client needs from USB, and nothing more: list devices, open one, claim an
 * interface, vendor control transfers and bulk OUT writes. The real implementation is
 * node-usb-transport.ts; tests drive the client through a simulated device behind the same
 * interface, so the protocol code in client.ts is exactly what runs against hardware.
 */

/** A device as seen on the bus, before it is opened. */
export interface UsbDeviceInfo {
  vendorId: number;
  productId: number;
  /** iSerialNumber of the device descriptor: the index (not the text) tells the boot stage. */
  serialIndex: number;
  /** Where it is plugged in ("bus-port.port"), for messages; stable while the device stays put. */
  location: string;
}

/** The setup stage of a control transfer (USB 2.0 section 9.3); wLength comes from the data. */
export interface ControlSetup {
  requestType: number;
  request: number;
  value: number;
  index: number;
}

export interface UsbBootConnection {
  /** bNumInterfaces of the active configuration. */
  readonly interfaceCount: number;
  /** The iSerialNumber string, when the device has one. */
  serialNumber(): Promise<string | undefined>;
  claimInterface(interfaceNumber: number): Promise<void>;
  /** Host-to-device control transfer with `data` as its data stage (may be empty). */
  controlOut(setup: ControlSetup, data: Uint8Array, timeoutMs: number): Promise<void>;
  /** Device-to-host control transfer reading up to `length` bytes. */
  controlIn(setup: ControlSetup, length: number, timeoutMs: number): Promise<Uint8Array>;
  /** Bulk OUT transfer on endpoint number `endpoint` (1..15); resolves to the bytes sent. */
  bulkOut(endpoint: number, data: Uint8Array, timeoutMs: number): Promise<number>;
  close(): Promise<void>;
}

export interface UsbBootTransportFactory {
  /** The devices attached right now (one look, no waiting). */
  list(): Promise<UsbDeviceInfo[]>;
  open(device: UsbDeviceInfo): Promise<UsbBootConnection>;
}

/**
 * A failed transfer. `kind` is what the protocol reacts to: a device that went away ends a stage
 * (that is how the Pi re-enumerates), a timeout may be retried, anything else is a failure.
 */
export class UsbTransferError extends Error {
  constructor(
    message: string,
    readonly kind: 'no-device' | 'io' | 'timeout' | 'access' | 'other',
  ) {
    super(message);
    this.name = 'UsbTransferError';
  }
}
