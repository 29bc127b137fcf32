//! The cloud during training: asked at most once per prompt, its verdict cached and reused (the
//! paper treats the cloud as deterministic).

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
    /// Every verdict so far, for checkpoints, sorted by problem id.
    fn verdicts(&self) -> Vec<(u64, bool)>;
    /// Restores verdicts saved by [`Self::verdicts`].
    fn restore_verdicts(&mut self, verdicts: &[(u64, bool)]);
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
/// verdict are appended to a JSONL cache file, which later runs (and `--resume`) read back.
pub struct HttpCloud {
    client: selfroute_cloud::HttpCloudClient,
    model: String,
    max_tokens: Option<u32>,
    runtime: tokio::runtime::Runtime,
    cache_path: std::path::PathBuf,
    verdicts: HashMap<u64, bool>,
    /// Prompts whose call failed this run (they count as wrong and are asked again next time).
    pub failures: usize,
}

/// One line of the cache file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CachedAnswer {
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
                verdicts.insert(entry.id, entry.correct);
            }
        }
        Ok(Self {
            client,
            model,
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
            vec![selfroute_core::Message::user(crate::train::prompt_text(
                task, problem,
            ))],
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

    fn verdicts(&self) -> Vec<(u64, bool)> {
        let mut all: Vec<(u64, bool)> = self.verdicts.iter().map(|(&k, &v)| (k, v)).collect();
        all.sort_unstable();
        all
    }

    fn restore_verdicts(&mut self, verdicts: &[(u64, bool)]) {
        self.verdicts.extend(verdicts.iter().copied());
    }
}
