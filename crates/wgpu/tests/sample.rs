//! The GPU sampler against the CPU one: greedy against `argmax` (ties, NaN, sizes that are not
//! multiples of the workgroup), temperature / top-k / top-p against `Sampler::sample` for the
//! same seeds, the logit bias, and the draw following the distribution.

mod support;

use selfroute_core::rng::SplitMix64;
use selfroute_core::sampler::argmax;
use selfroute_core::{Sampler, SamplingParams, TokenPick};
use selfroute_wgpu::sample::{GpuSampler, MAX_BIAS};
use selfroute_wgpu::{GpuContext, GpuError};
use support::{context, random};

/// One sampler over one logits buffer, reused pick after pick as the model uses it (building
/// the pipelines per pick, as `pick_once` does, would dominate the test's time on lavapipe).
struct Picker {
    logits: wgpu::Buffer,
    sampler: GpuSampler,
    readback: wgpu::Buffer,
    vocab: usize,
}

impl Picker {
    fn new(ctx: &GpuContext, vocab: usize) -> Self {
        let logits = ctx.storage_buffer("logits", &vec![0u8; vocab * 4]).unwrap();
        let sampler = GpuSampler::new(ctx, &logits, vocab).unwrap();
        Self {
            logits,
            sampler,
            readback: ctx.readback_buffer("token", 4),
            vocab,
        }
    }

    fn pick(&self, ctx: &GpuContext, logits: &[f32], pick: &TokenPick<'_>) -> u32 {
        assert_eq!(logits.len(), self.vocab);
        ctx.queue
            .write_buffer(&self.logits, 0, bytemuck::cast_slice(logits));
        self.sampler.prepare(&ctx.queue, pick).unwrap();
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            self.sampler.encode(&mut pass);
        }
        encoder.copy_buffer_to_buffer(self.sampler.token_buffer(), 0, &self.readback, 0, 4);
        ctx.queue.submit([encoder.finish()]);
        let bytes = pollster::block_on(ctx.read_bytes(&self.readback, 4)).unwrap();
        let id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        assert!((id as usize) < self.vocab, "id {id} outside {}", self.vocab);
        id
    }
}

fn sampled(uniform: f64, bias: &[(u32, f32)]) -> TokenPick<'_> {
    TokenPick {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        uniform,
        logit_bias: bias,
    }
}

fn greedy(bias: &[(u32, f32)]) -> TokenPick<'_> {
    TokenPick {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        uniform: 0.0,
        logit_bias: bias,
    }
}

/// Random logits whose scaled values l * (1 / T) are all different, so the CPU's descending order
/// (ties in unspecified order) is the GPU's; scaling can merge neighbouring floats, hence the
/// check after it. `peaks` tokens stand out as a model's likely next tokens do.
fn distinct_logits(n: usize, seed: u64, peaks: usize, temperature: f32) -> Vec<f32> {
    let inv_t = 1.0 / temperature;
    let mut v = random(n, seed, 4.0);
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    for _ in 0..peaks {
        let i = rng.below(n as u64) as usize;
        v[i] += 6.0 + 6.0 * rng.next_f64() as f32;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    for w in 1..n {
        let prev = v[order[w - 1]];
        let cur = &mut v[order[w]];
        while *cur <= prev || *cur * inv_t <= prev * inv_t {
            *cur = cur.next_up();
        }
    }
    v
}

/// A bias list as the offload detector makes them: repeated ids add up, ids outside the
/// vocabulary are ignored.
const BOOST: &[(u32, f32)] = &[(17, 9.0), (4242, 7.5), (17, -1.0), (u32::MAX, 3.0)];

fn with_bias(logits: &[f32], bias: &[(u32, f32)]) -> Vec<f32> {
    let mut row = logits.to_vec();
    for &(id, b) in bias {
        if let Some(l) = row.get_mut(id as usize) {
            *l += b;
        }
    }
    row
}

#[test]
fn greedy_picks_the_first_maximum_like_argmax() {
    let Some(ctx) = context() else { return };
    for n in [1usize, 255, 256, 1000, 1024, 1025, 49152, 49153] {
        let picker = Picker::new(&ctx, n);
        for seed in 0..3u64 {
            let mut logits = random(n, seed * 1000 + n as u64, 8.0);
            let check = |logits: &[f32], what: &str| {
                let got = picker.pick(&ctx, logits, &greedy(&[]));
                assert_eq!(got, argmax(logits), "n {n} seed {seed}: {what}");
            };
            check(&logits, "random");
            let top = argmax(&logits) as usize;
            // A tie after the maximum keeps the first; one before it takes over.
            logits[n - 1] = logits[top];
            check(&logits, "tie after");
            logits[0] = logits[top];
            check(&logits, "tie before");
            // NaN never wins, wherever it is, including over the old maximum.
            for i in (0..n).step_by(7) {
                logits[i] = f32::NAN;
            }
            logits[top] = f32::NAN;
            check(&logits, "NaN");
        }
        // Nothing but NaN, -inf, or zeros of both signs: the first index, as argmax.
        let nan = vec![f32::NAN; n];
        assert_eq!(picker.pick(&ctx, &nan, &greedy(&[])), argmax(&nan));
        let mut neg = vec![f32::NEG_INFINITY; n];
        neg[0] = f32::NAN;
        assert_eq!(picker.pick(&ctx, &neg, &greedy(&[])), argmax(&neg));
        let zeros: Vec<f32> = (0..n)
            .map(|i| if i % 2 == 0 { -0.0 } else { 0.0 })
            .collect();
        assert_eq!(picker.pick(&ctx, &zeros, &greedy(&[])), argmax(&zeros));
    }
    ctx.check().unwrap();
}

#[test]
fn sampling_matches_the_cpu_sampler_for_the_same_seed() {
    let Some(ctx) = context() else { return };
    // Per vocabulary: (temperature, top_k, top_p, bias, seeds). 49152 runs the cuts over the
    // vocabulary (top_k 3000 and a wide nucleus stay above the 1024 candidates the kernel keeps
    // in registers); 1000 and 3000 run them on gathered candidates.
    type Case = (f32, usize, f32, &'static [(u32, f32)], u64);
    let plan: [(usize, &[Case]); 4] = [
        (
            49152,
            &[
                (0.7, 40, 0.9, &[], 10),
                (1.0, 0, 0.95, &[], 10),
                (1.3, 5, 1.0, &[], 10),
                (1.0, 0, 1.0, &[], 10),
                (0.9, 3000, 0.8, BOOST, 8),
            ],
        ),
        (49153, &[(1.0, 0, 0.5, BOOST, 8)]),
        (1000, &[(0.8, 0, 0.9, &[], 16)]),
        (3000, &[(1.2, 100, 0.97, &[], 16)]),
    ];
    let steps = 4;
    let mut picks = 0;
    for (vocab, cases) in plan {
        let picker = Picker::new(&ctx, vocab);
        for &(temperature, top_k, top_p, bias, seeds) in cases {
            let mut seen = std::collections::HashSet::new();
            for seed in 0..seeds {
                let params = SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    seed,
                    ..Default::default()
                };
                // The device's RNG is a clone taken before either draws, and each step draws
                // once from each, so every pick uses the number the CPU used for the same step.
                let mut cpu = Sampler::new(params).unwrap();
                let mut device = cpu.clone();
                for step in 0..steps {
                    let peaks = 1 + seed as usize % 40;
                    let logits = distinct_logits(vocab, seed * 31 + step, peaks, temperature);
                    let want = cpu.sample(&mut with_bias(&logits, bias), &[]).unwrap();
                    let pick = device.device_pick(bias).unwrap();
                    let got = picker.pick(&ctx, &logits, &pick);
                    assert_eq!(
                        got, want,
                        "vocab {vocab} T {temperature} k {top_k} p {top_p} seed {seed} \
                         step {step} (uniform {})",
                        pick.uniform
                    );
                    seen.insert(got);
                    picks += 1;
                }
            }
            // The comparison is only worth something if the draws land on many tokens.
            assert!(
                seen.len() > 3,
                "T {temperature} k {top_k} p {top_p}: only {seen:?}"
            );
        }
    }
    assert!(picks > 300);
    ctx.check().unwrap();
}

#[test]
fn logit_bias_forbids_and_forces_tokens() {
    let Some(ctx) = context() else { return };
    let n = 5000;
    let picker = Picker::new(&ctx, n);
    let logits = distinct_logits(n, 3, 4, 1.0);
    let top = argmax(&logits);
    let mut rest = logits.clone();
    rest[top as usize] = f32::NEG_INFINITY;
    let second = argmax(&rest);

    let forbid = [(top, f32::NEG_INFINITY)];
    assert_eq!(picker.pick(&ctx, &logits, &greedy(&forbid)), second);
    // Repeated ids add up in order; ids outside the vocabulary are ignored.
    let forced = [(9u32, 30.0f32), (n as u32, 1e9), (9, 30.0)];
    assert_eq!(picker.pick(&ctx, &logits, &greedy(&forced)), 9);
    let barely = [(9u32, -1e9f32), (9, 1e9)];
    assert_eq!(
        picker.pick(&ctx, &logits, &greedy(&barely)),
        argmax(&with_bias(&logits, &barely))
    );

    // Sampling: a forced token always comes up; forbidden ones never do (all but two of the
    // tokens with finite logits are forbidden here).
    let mut rng = SplitMix64::new(11);
    let mut few = vec![f32::NEG_INFINITY; n];
    few[..MAX_BIAS + 2].copy_from_slice(&logits[..MAX_BIAS + 2]);
    let forbid_all_but: Vec<(u32, f32)> = (0..MAX_BIAS as u32 + 2)
        .filter(|&i| i != 10 && i != 20)
        .map(|i| (i, f32::NEG_INFINITY))
        .collect();
    let mut seen = [0usize; 2];
    for _ in 0..40 {
        let uniform = rng.next_f64();
        let forced = [(77u32, 100.0f32)];
        assert_eq!(picker.pick(&ctx, &logits, &sampled(uniform, &forced)), 77);
        match picker.pick(&ctx, &few, &sampled(uniform, &forbid_all_but)) {
            10 => seen[0] += 1,
            20 => seen[1] += 1,
            other => panic!("picked forbidden token {other}"),
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");

    // More entries than the buffer holds is an error, not a silent truncation.
    let too_many = vec![(0u32, 1.0f32); MAX_BIAS + 1];
    assert!(matches!(
        picker.sampler.prepare(&ctx.queue, &greedy(&too_many)),
        Err(GpuError::Invalid(_))
    ));
    let just_enough = vec![(1u32, 0.5f32); MAX_BIAS];
    assert_eq!(
        picker.pick(&ctx, &logits, &greedy(&just_enough)),
        argmax(&with_bias(&logits, &just_enough))
    );
    ctx.check().unwrap();
}

#[test]
fn draws_follow_the_distribution() {
    let Some(ctx) = context() else { return };
    // softmax([0, ln 3, -inf]) = [0.25, 0.75, 0].
    let logits = [0.0f32, 3.0f32.ln(), f32::NEG_INFINITY];
    let picker = Picker::new(&ctx, logits.len());
    let mut rng = SplitMix64::new(5);
    let draws = 2000;
    let mut counts = [0usize; 3];
    for _ in 0..draws {
        let pick = TokenPick {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            uniform: rng.next_f64(),
            logit_bias: &[],
        };
        counts[picker.pick(&ctx, &logits, &pick) as usize] += 1;
    }
    let ones = counts[1] as f64 / draws as f64;
    assert!((ones - 0.75).abs() < 0.03, "P(token 1) = {ones}");
    assert_eq!(counts[2], 0);
    // Token 1 holds the first 0.75 of the descending mass.
    for (uniform, want) in [(0.0, 1), (0.2, 1), (0.74, 1), (0.76, 0), (0.99, 0)] {
        let got = picker.pick(&ctx, &logits, &sampled(uniform, &[]));
        assert_eq!(got, want, "uniform {uniform}");
    }
    // The one-off path picks the same way.
    let once = pollster::block_on(GpuSampler::pick_once(&ctx, &logits, &sampled(0.8, &[])));
    assert_eq!(once.unwrap(), 0);
    ctx.check().unwrap();
}

#[test]
fn degenerate_rows_still_pick_a_token() {
    let Some(ctx) = context() else { return };
    let n = 2000;
    let picker = Picker::new(&ctx, n);
    let pick = |logits: &[f32], uniform| picker.pick(&ctx, logits, &sampled(uniform, &[]));
    // An infinite logit takes all the mass (the CPU's exp(inf - inf) would be NaN).
    let mut row = distinct_logits(n, 9, 3, 1.0);
    row[1234] = f32::INFINITY;
    assert_eq!(pick(&row, 0.0), 1234);
    assert_eq!(pick(&row, 0.999), 1234);
    // NaNs are dropped, as on the CPU.
    let mut row = vec![f32::NAN; n];
    row[7] = -3.0;
    row[1500] = -3.5;
    for uniform in [0.0, 0.5, 0.999] {
        let got = pick(&row, uniform);
        assert!(got == 7 || got == 1500, "{got}");
    }
    // Everything forbidden: the CPU errs only on all-NaN; the GPU still returns an id in range
    // (checked by `Picker::pick`) rather than garbage.
    pick(&vec![f32::NEG_INFINITY; n], 0.3);
    pick(&vec![f32::NAN; n], 0.3);
    ctx.check().unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let Some(ctx) = context() else { return };
    let picker = Picker::new(&ctx, 10);
    let base = TokenPick {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        uniform: 0.5,
        logit_bias: &[],
    };
    let bad = [
        TokenPick {
            temperature: -1.0,
            ..base
        },
        TokenPick {
            temperature: f32::NAN,
            ..base
        },
        TokenPick {
            temperature: f32::INFINITY,
            ..base
        },
        TokenPick { top_p: 0.0, ..base },
        TokenPick { top_p: 1.5, ..base },
        TokenPick {
            top_p: f32::NAN,
            ..base
        },
        TokenPick {
            uniform: 1.0,
            ..base
        },
        TokenPick {
            uniform: -0.1,
            ..base
        },
        TokenPick {
            uniform: f64::NAN,
            ..base
        },
    ];
    for pick in bad {
        assert!(
            matches!(
                picker.sampler.prepare(&ctx.queue, &pick),
                Err(GpuError::Invalid(_))
            ),
            "{pick:?}"
        );
    }
    assert!(matches!(
        pollster::block_on(GpuSampler::pick_once(&ctx, &[], &base)),
        Err(GpuError::Invalid(_))
    ));
    let small = ctx.storage_buffer("small", &[0u8; 16]).unwrap();
    assert!(matches!(
        GpuSampler::new(&ctx, &small, 5),
        Err(GpuError::Invalid(_))
    ));
    assert!(matches!(
        GpuSampler::new(&ctx, &small, 0),
        Err(GpuError::Invalid(_))
    ));
    // The dispatch count follows the kind of pick prepared.
    picker.sampler.prepare(&ctx.queue, &greedy(&[])).unwrap();
    assert_eq!(picker.sampler.dispatches(), 2);
    picker.sampler.prepare(&ctx.queue, &base).unwrap();
    assert_eq!(picker.sampler.dispatches(), 3);
    ctx.check().unwrap();
}
