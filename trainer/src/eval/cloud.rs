//! The clouds an evaluation can ask, as [`CloudClient`]s, so offloads go through the same
//! [`selfroute_core::Assistant`] users run: a simulated cloud (right with a fixed probability per
//! problem, the same verdicts as training's [`SimulatedCloud`] with the same seed) or a real
//! OpenAI-compatible endpoint.

use std::collections::HashMap;
use std::sync::Mutex;

use selfroute_core::openai::ChatRequest;
use selfroute_core::{CloudClient, CloudCompletion, CloudError, CloudReply, Control, Role};

use crate::cloud::{CloudOracle, SimulatedCloud};
use crate::error::Result;
use crate::tasks::{Problem, Task};
use crate::train::prompt_text;

/// A cloud that knows the evaluated problems: asked one (by its user message, which is what a
/// real cloud receives), it answers with the reference answer when the simulated verdict says
/// right, and with a refusal otherwise. The answer is still judged by the task's verifier, like
/// any cloud's.
pub struct SimulatedCloudClient {
    oracle: Mutex<SimulatedCloud>,
    task: Box<dyn Task>,
    /// Prompt text -> problem.
    problems: HashMap<String, Problem>,
}

impl SimulatedCloudClient {
    /// `task` must be the evaluated task (its answer format shapes the prompt text the cloud
    /// receives); `accuracy` and `seed` as for [`SimulatedCloud::new`].
    pub fn new(
        accuracy: f64,
        seed: u64,
        task: Box<dyn Task>,
        problems: &[Problem],
    ) -> Result<Self> {
        let oracle = SimulatedCloud::new(accuracy, seed)?;
        let problems = problems
            .iter()
            .map(|p| (prompt_text(task.as_ref(), p), p.clone()))
            .collect();
        Ok(Self {
            oracle: Mutex::new(oracle),
            task,
            problems,
        })
    }

    pub fn describe(&self) -> String {
        self.oracle
            .lock()
            .map(|o| o.describe())
            .unwrap_or_else(|_| "simulated cloud".into())
    }

    fn answer(&self, request: &ChatRequest) -> std::result::Result<String, CloudError> {
        let question = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        let problem = self.problems.get(question).ok_or_else(|| {
            CloudError::Transport("the simulated cloud was asked a problem it does not know".into())
        })?;
        let correct = self
            .oracle
            .lock()
            .map_err(|_| CloudError::Transport("the simulated cloud's lock is poisoned".into()))?
            .is_correct(self.task.as_ref(), problem)
            .map_err(|e| CloudError::Transport(e.to_string()))?;
        Ok(if correct {
            simulated_answer(&problem.answer)
        } else {
            "I could not solve this one.".to_string()
        })
    }
}

/// What the simulated cloud says when it is right: the reference answer in the answer tags every
/// task's format asks for.
pub fn simulated_answer(reference: &str) -> String {
    format!("The answer is <answer>{reference}</answer>")
}

impl CloudClient for SimulatedCloudClient {
    async fn stream_chat(
        &self,
        request: &ChatRequest,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> CloudReply {
        let text = match self.answer(request) {
            Ok(text) => text,
            Err(e) => return CloudReply::not_sent(e),
        };
        // Streamed word by word, like a server's one-token chunks, so a stop can cut it short.
        let mut chunks = 0u32;
        for (i, word) in text.split(' ').enumerate() {
            let piece = if i == 0 {
                word.to_string()
            } else {
                format!(" {word}")
            };
            chunks += 1;
            if on_text(&piece) == Control::Stop {
                return CloudReply {
                    result: Err(CloudError::Cancelled),
                    bytes_sent: 0,
                    attempts: 1,
                };
            }
        }
        CloudReply {
            result: Ok(CloudCompletion {
                text,
                finish_reason: Some("stop".into()),
                completion_tokens: chunks,
                model: "simulated".into(),
            }),
            bytes_sent: 0,
            attempts: 1,
        }
    }
}

/// The cloud of one evaluation run: one type for either kind, as the Assistant is generic over
/// its client.
pub enum EvalCloud {
    Simulated(Box<SimulatedCloudClient>),
    Http(selfroute_cloud::HttpCloudClient),
}

impl EvalCloud {
    pub fn describe(&self) -> String {
        match self {
            Self::Simulated(s) => s.describe(),
            Self::Http(h) => format!("cloud {}", h.url()),
        }
    }
}

impl CloudClient for EvalCloud {
    async fn stream_chat(
        &self,
        request: &ChatRequest,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> CloudReply {
        match self {
            Self::Simulated(s) => s.stream_chat(request, on_text).await,
            Self::Http(h) => h.stream_chat(request, on_text).await,
        }
    }
}
