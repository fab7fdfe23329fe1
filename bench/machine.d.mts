/** The machine check's times, in ms. */
export interface MachineCheck { minMs: number, medianMs: number, maxMs: number }
/** The machine check, in a child (on `cores`, a taskset list, when given). */
export function probeMachine (cores?: string): MachineCheck
