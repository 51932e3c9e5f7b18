/**
 * The usbboot transport over real USB, through the `usb` npm package (node-usb 2.x, libusb
 * bindings with prebuilt binaries inside the package). It is an optional dependency: a host
 * where it cannot load still builds and flashes images, and only `rpiboot` says it is missing.
 * The handful of node-usb calls used are typed here structurally, so that the rest of the
 * project compiles whether or not the package is installed.
 */
import { createRequire } from 'node:module';
import { EdgekitError } from '../../util/errors.js';
import { UsbTransferError, type ControlSetup, type UsbBootConnection, type UsbBootTransportFactory, type UsbDeviceInfo } from './transport.js';

interface LibUsbError extends Error {
  errno?: number;
}
type Callback<T> = (error: LibUsbError | undefined, value?: T) => void;

interface NodeUsbOutEndpoint {
  direction: 'in' | 'out';
  transferType: number;
  timeout: number;
  transfer(buffer: Buffer, cb: (error: LibUsbError | undefined, actual: number) => void): unknown;
}
interface NodeUsbInterface {
  endpoints: NodeUsbOutEndpoint[];
  endpoint(address: number): NodeUsbOutEndpoint | undefined;
  claim(): void;
  release(cb?: (error?: LibUsbError) => void): void;
  isKernelDriverActive(): boolean;
  detachKernelDriver(): void;
}
interface NodeUsbDevice {
  busNumber: number;
  deviceAddress: number;
  portNumbers: number[];
  deviceDescriptor: { idVendor: number; idProduct: number; iSerialNumber: number };
  configDescriptor?: { bNumInterfaces: number };
  timeout: number;
  open(defaultConfig?: boolean): void;
  close(): void;
  interface(n: number): NodeUsbInterface | undefined;
  controlTransfer(requestType: number, request: number, value: number, index: number, dataOrLength: number | Buffer, cb: Callback<Buffer | number>): unknown;
  getStringDescriptor(index: number, cb: Callback<string>): void;
}
export interface NodeUsbModule {
  getDeviceList(): NodeUsbDevice[];
}

let loaded: NodeUsbModule | undefined;

/** Loads the `usb` package (`name` only differs in tests), or throws one line saying it is missing. */
export function loadNodeUsb(name = 'usb'): NodeUsbModule {
  if (loaded && name === 'usb') return loaded;
  let mod: NodeUsbModule;
  try {
    mod = createRequire(import.meta.url)(name) as NodeUsbModule;
  } catch (err) {
    const why = (err instanceof Error ? err.message : String(err)).split('\n')[0];
    throw new EdgekitError(`USB access needs the optional "usb" package, which could not be loaded (${why}); run npm install usb@2`);
  }
  if (name === 'usb') loaded = mod;
  return mod;
}

export function nodeUsbTransport(mod: NodeUsbModule = loadNodeUsb()): UsbBootTransportFactory {
  // Each list() hands out fresh device objects; keep the one behind each info to open it later.
  const known = new WeakMap<UsbDeviceInfo, NodeUsbDevice>();
  return {
    async list() {
      return mod.getDeviceList().map((dev) => {
        const d = dev.deviceDescriptor;
        const info: UsbDeviceInfo = {
          vendorId: d.idVendor,
          productId: d.idProduct,
          serialIndex: d.iSerialNumber,
          location: `usb ${dev.busNumber}-${(dev.portNumbers ?? []).join('.') || dev.deviceAddress}`,
        };
        known.set(info, dev);
        return info;
      });
    },
    async open(info) {
      const dev = known.get(info);
      if (!dev) throw new UsbTransferError(`${info.location}: not from this transport's list()`, 'other');
      try {
        dev.open();
      } catch (err) {
        throw translate(err, `open ${info.location}`);
      }
      return connection(dev);
    },
  };
}

function connection(dev: NodeUsbDevice): UsbBootConnection {
  let claimed: NodeUsbInterface | undefined;
  return {
    interfaceCount: dev.configDescriptor?.bNumInterfaces ?? 1,
    serialNumber() {
      const index = dev.deviceDescriptor.iSerialNumber;
      if (!index) return Promise.resolve(undefined);
      return new Promise((resolve) => dev.getStringDescriptor(index, (err, s) => resolve(err ? undefined : s?.replace(/\0+$/, ''))));
    },
    async claimInterface(n) {
      const iface = dev.interface(n);
      if (!iface) throw new UsbTransferError(`no interface ${n}`, 'other');
      try {
        // A kernel driver may have bound the mass-storage interface of a BCM2837 first.
        if (process.platform === 'linux' && iface.isKernelDriverActive()) iface.detachKernelDriver();
        iface.claim();
      } catch (err) {
        throw translate(err, `claim interface ${n}`);
      }
      claimed = iface;
    },
    controlOut(setup, data, timeoutMs) {
      return control(dev, setup, Buffer.from(data), timeoutMs).then(() => undefined);
    },
    async controlIn(setup, length, timeoutMs) {
      const got = await control(dev, setup, length, timeoutMs);
      return Buffer.isBuffer(got) ? got : Buffer.alloc(0);
    },
    bulkOut(endpoint, data, timeoutMs) {
      const address = endpoint & 0x0f;
      const ep = claimed?.endpoint(address);
      if (!ep || ep.direction !== 'out') return Promise.reject(new UsbTransferError(`no bulk OUT endpoint ${endpoint}`, 'other'));
      ep.timeout = timeoutMs;
      const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      return new Promise((resolve, reject) =>
        ep.transfer(buf, (err, actual) => (err ? reject(translate(err, `bulk OUT ${endpoint}`)) : resolve(actual ?? buf.length))),
      );
    },
    async close() {
      const iface = claimed;
      claimed = undefined;
      if (iface) await new Promise<void>((resolve) => iface.release(() => resolve()));
      try {
        dev.close();
      } catch {
        // Already gone: the Pi re-enumerates as soon as it has what it needs.
      }
    },
  };
}

function control(dev: NodeUsbDevice, s: ControlSetup, dataOrLength: Buffer | number, timeoutMs: number): Promise<Buffer | number | undefined> {
  dev.timeout = timeoutMs;
  return new Promise((resolve, reject) => {
    try {
      dev.controlTransfer(s.requestType, s.request, s.value, s.index, dataOrLength, (err, value) =>
        err ? reject(translate(err, 'control transfer')) : resolve(value),
      );
    } catch (err) {
      reject(translate(err, 'control transfer'));
    }
  });
}

/**
 * libusb numbers (libusb.h, stable ABI) to the kinds the protocol reacts to. node-usb reports
 * calls (open, claim) with negative libusb_error codes and finished transfers with their positive
 * libusb_transfer_status.
 */
const ERROR_KINDS: Record<number, UsbTransferError['kind']> = {
  [-1]: 'io', // LIBUSB_ERROR_IO
  [-3]: 'access', // LIBUSB_ERROR_ACCESS
  [-4]: 'no-device', // LIBUSB_ERROR_NO_DEVICE
  [-7]: 'timeout', // LIBUSB_ERROR_TIMEOUT
  1: 'io', // LIBUSB_TRANSFER_ERROR
  2: 'timeout', // LIBUSB_TRANSFER_TIMED_OUT
  5: 'no-device', // LIBUSB_TRANSFER_NO_DEVICE
};

function translate(err: unknown, what: string): UsbTransferError {
  const e = err as LibUsbError;
  const kind = (e?.errno !== undefined && ERROR_KINDS[e.errno]) || 'other';
  return new UsbTransferError(`${what}: ${e?.message ?? String(err)}`, kind);
}
