/**
 * Serial ports without hardware: serialport's own mock binding. A test creates a port by path,
 * opens it through openConsole's `openPort` hook, and plays the device's side with `device(path)`.
 */
import { SerialPortMock } from 'serialport';
import type { SerialPortLike } from '../../src/flash/console.js';

const opened = new Map<string, SerialPortMock>();

export function createMockPort(path: string): void {
  SerialPortMock.binding.createPort(path, { echo: false, record: true });
}

export function resetMockPorts(): void {
  SerialPortMock.binding.reset();
  opened.clear();
}

export const openMockPort = (path: string, baudRate: number): SerialPortLike => {
  const p = new SerialPortMock({ path, baudRate });
  opened.set(path, p);
  return p;
};

/** The device end of an opened mock port: what it sends, what it was sent, and unplugging it. */
export function device(path: string) {
  const p = opened.get(path);
  if (!p?.port) throw new Error(`mock port ${path} is not open`);
  const port = p.port;
  return {
    send: (text: string | Buffer) => port.emitData(Buffer.from(text)),
    received: () => port.recording.toString('utf8'),
    baudRate: () => port.openOptions.baudRate,
    unplug: () => p.destroy(),
  };
}
