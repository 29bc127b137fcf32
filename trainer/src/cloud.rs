//! The cloud during training: asked at most once per prompt, its verdict cached and reused (the
//! paper treats the cloud as deterministic). Verdicts belong to the cloud that gave them: the
//! caches (in memory, in `cloud-cache.jsonl`, in checkpoints) are keyed by
//! [`CloudOracle::identity`] as well as the problem, so another cloud never reuses them.

use std::collections::HashMap;

use crate::error::{Result, TrainError};
use crate::tasks::{Problem, Task, Verdict};

pub trait CloudOracle {
    /// Whether the cloud answers `problem` correctly.
    fn is_correct(&mut self, task: &dyn Task, problem: &Problem) -> Result<bool>;
    /// Distinct prompts sent to the cloud so far.
    fn calls(&self) -> usize;
    /// How outputs should name this cloud (a simulated one says so).
    fn describe(&self) -> String;
    /// What makes this cloud's verdicts this cloud's: the endpoint and model of a real one, the
    /// accuracy and seed of a simulated one. Cached verdicts are reused only under the same
    /// identity.
    fn identity(&self) -> String {
        self.describe()
    }
    /// Every verdict so far, for checkpoints, sorted by problem id.
    fn verdicts(&self) -> Vec<(u64, bool)>;
    /// Restores verdicts saved by [`Self::verdicts`] of a cloud with the same
    /// [`Self::identity`] (the caller checks).
    fn restore_verdicts(&mut self, verdicts: &[(u64, bool)]);
    /// Calls that failed so far (each counted as a wrong answer and not cached).
    fn failures(&self) -> usize {
        0
    }
}

/// A simulated cloud, correct with probability `accuracy`, fixed per prompt by a seeded hash.
pub struct SimulatedCloud {
    accuracy: f64,
    seed: u64,
    asked: HashMap<u64, bool>,
}

impl SimulatedCloud {
    pub fn new(accuracy: f64, seed: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&accuracy) {
            return Err(TrainError::InvalidSettings(format!(
                "simulated cloud accuracy {accuracy} must be between 0 and 1"
            )));
        }
        Ok(Self {
            accuracy,
            seed,
            asked: HashMap::new(),
        })
    }

    /// Parses `simulated:ACC`.
    pub fn parse(spec: &str, seed: u64) -> Result<Option<Self>> {
        let Some(acc) = spec.strip_prefix("simulated:") else {
            return Ok(None);
        };
        let accuracy: f64 = acc.parse().map_err(|_| {
            TrainError::InvalidSettings(format!("`{spec}`: the accuracy must be a number"))
        })?;
        Self::new(accuracy, seed).map(Some)
    }
}

impl CloudOracle for SimulatedCloud {
    fn is_correct(&mut self, _task: &dyn Task, problem: &Problem) -> Result<bool> {
        let (accuracy, seed) = (self.accuracy, self.seed);
        Ok(*self.asked.entry(problem.id).or_insert_with(|| {
            let mut rng = selfroute_core::rng::SplitMix64::new(seed ^ problem.id);
            rng.next_f64() < accuracy
        }))
    }

    fn calls(&self) -> usize {
        self.asked.len()
    }

    fn describe(&self) -> String {
        format!("simulated cloud (accuracy {})", self.accuracy)
    }

    fn identity(&self) -> String {
        // Verdicts are drawn from (accuracy, seed): either differing gives other verdicts.
        format!("simulated:{}:seed:{}", self.accuracy, self.seed)
    }

    fn verdicts(&self) -> Vec<(u64, bool)> {
        let mut all: Vec<(u64, bool)> = self.asked.iter().map(|(&k, &v)| (k, v)).collect();
        all.sort_unstable();
        all
    }

    fn restore_verdicts(&mut self, verdicts: &[(u64, bool)]) {
        self.asked = verdicts.iter().copied().collect();
    }
}

/// A real OpenAI-compatible endpoint. Each prompt is sent at most once; the answer and its
/// verdict are appended to a JSONL cache file, which later runs (and `--resume`) read back
/// (only the lines this endpoint and model wrote).
pub struct HttpCloud {
    client: selfroute_cloud::HttpCloudClient,
    model: String,
    identity: String,
    max_tokens: Option<u32>,
    runtime: tokio::runtime::Runtime,
    cache_path: std::path::PathBuf,
    verdicts: HashMap<u64, bool>,
    /// Calls that failed this run. Each counts as a wrong answer for the step that asked (the
    /// trainer asks once per prompt per step) and is not cached: a later step asks again.
    pub failures: usize,
}

/// One line of the cache file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CachedAnswer {
    /// [`CloudOracle::identity`] of the cloud that answered. Lines written before it was
    /// recorded read as "" and match no cloud: whose answers they are is unknown.
    #[serde(default)]
    cloud: String,
    id: u64,
    question: String,
    answer: String,
    correct: bool,
}

impl HttpCloud {
    pub fn new(
        url: &str,
        api_key: Option<String>,
        model: String,
        max_tokens: Option<u32>,
        cache_path: std::path::PathBuf,
    ) -> Result<Self> {
        let mut config = selfroute_cloud::CloudConfig::new(url);
        config.api_key = api_key;
        let client = selfroute_cloud::HttpCloudClient::new(config)
            .map_err(|e| TrainError::InvalidSettings(format!("--cloud {url}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TrainError::InvalidSettings(format!("starting the HTTP runtime: {e}")))?;
        let identity = format!("{} model {}", client.url(), model);
        let mut verdicts = HashMap::new();
        if cache_path.exists() {
            let text = std::fs::read_to_string(&cache_path).map_err(|e| TrainError::Data {
                path: cache_path.display().to_string(),
                reason: e.to_string(),
            })?;
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let entry: CachedAnswer =
                    serde_json::from_str(line).map_err(|e| TrainError::Data {
                        path: cache_path.display().to_string(),
                        reason: format!("line {}: {e}", i + 1),
                    })?;
                if entry.cloud == identity {
                    verdicts.insert(entry.id, entry.correct);
                }
            }
        }
        Ok(Self {
            client,
            model,
            identity,
            max_tokens,
            runtime,
            cache_path,
            verdicts,
            failures: 0,
        })
    }
}

impl CloudOracle for HttpCloud {
    fn is_correct(&mut self, task: &dyn Task, problem: &Problem) -> Result<bool> {
        if let Some(&v) = self.verdicts.get(&problem.id) {
            return Ok(v);
        }
        use selfroute_core::CloudClient;
        // The cloud gets the same question the local model got (the original conversation).
        let mut request = selfroute_core::openai::ChatRequest::new(
            self.model.clone(),
            crate::train::prompt_messages(task, problem),
        );
        request.max_tokens = self.max_tokens;
        let reply = self.runtime.block_on(
            self.client
                .stream_chat(&request, &mut |_| selfroute_core::Control::Continue),
        );
        let answer = match reply.result {
            Ok(done) => done.text,
            Err(_) => {
                self.failures += 1;
                return Ok(false);
            }
        };
        let correct = task.verify(problem, &answer) == Verdict::Correct;
        let line = serde_json::to_string(&CachedAnswer {
            cloud: self.identity.clone(),
            id: problem.id,
            question: problem.question.clone(),
            answer,
            correct,
        })
        .map_err(|e| TrainError::InvalidSettings(e.to_string()))?;
        crate::checkpoint::append_line(&self.cache_path, &line)?;
        self.verdicts.insert(problem.id, correct);
        Ok(correct)
    }

    fn calls(&self) -> usize {
        self.verdicts.len()
    }

    fn describe(&self) -> String {
        format!("cloud {} ({})", self.client.url(), self.model)
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn failures(&self) -> usize {
        self.failures
    }

    fn verdicts(&self) -> Vec<(u64, bool)> {
        let mut all: Vec<(u64, bool)> = self.verdicts.iter().map(|(&k, &v)| (k, v)).collect();
        all.sort_unstable();
        all
    }

    fn restore_verdicts(&mut self, verdicts: &[(u64, bool)]) {
        self.verdicts.extend(verdicts.iter().copied());
    }
}
