export { rpiboot, type RpibootOptions, type RpibootResult } from './client.js';
export { nodeUsbTransport, loadNodeUsb } from './node-usb-transport.js';
export { UsbTransferError, type UsbBootTransportFactory, type UsbBootConnection, type UsbDeviceInfo, type ControlSetup } from './transport.js';
