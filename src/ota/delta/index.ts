/** Small root updates: a delta from the running slot's payload to the next release's (docs/deltas.md). */
export { makeDelta, type DeltaInfo, type MakeDeltaOptions } from './make.js';
export { applyDelta, type ApplyDeltaOptions, type SlotTarget, type WritableTarget } from './apply.js';
