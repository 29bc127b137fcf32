// What changes from one forward call to the next, written once per call into one uniform buffer
// that every kernel's bind group shares (so bind groups are made once, at load).
struct Step {
    // Tokens in this call.
    n: u32,
    // Position of the first of them.
    start: u32,
    // First row whose logits are wanted, and how many rows (all, or just the last).
    out_row0: u32,
    out_rows: u32,
}
