//! The adapter, device and queue, requested within default WebGPU limits so what works here works
//! in every browser.

use std::sync::{Arc, Mutex};

use crate::error::{GpuError, Result};

/// What an adapter is called when its driver gives no name (Chromium's WebGPU leaves
/// `GPUAdapterInfo.description` empty); a browser front end can replace it with vendor and
/// architecture.
pub const UNNAMED_ADAPTER: &str = "unnamed adapter";

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"
    pub adapter_name: String,
    pub limits: wgpu::Limits,
    /// The adapter's kind (discrete, integrated, CPU...), for kernels tuned per kind.
    pub device_type: wgpu::DeviceType,
    /// The first error wgpu reported outside an operation that returns one (validation, out of
    /// memory, device loss). wgpu's default is to panic; the engine turns it into a `GpuError` at
    /// the next check instead.
    fault: Arc<Mutex<Option<GpuError>>>,
}

impl GpuContext {
    /// The first adapter of any backend compiled in, with the default (WebGPU) limits.
    pub async fn new() -> Result<Self> {
        // WGPU_BACKEND etc. from the environment, as wgpu's own tools honour them.
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        // WGPU_ADAPTER_NAME picks an adapter by name where there are several.
        let adapter = wgpu::util::initialize_adapter_from_env_or_default(&instance, None)
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let limits = wgpu::Limits::default();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("selfroute"),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::Device(e.to_string()))?;
        let fault: Arc<Mutex<Option<GpuError>>> = Arc::default();
        let record = |slot: &Arc<Mutex<Option<GpuError>>>, error: GpuError| {
            if let Ok(mut slot) = slot.lock() {
                slot.get_or_insert(error);
            }
        };
        let on_error = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let error = match e {
                wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory(e.to_string()),
                other => GpuError::Validation(other.to_string()),
            };
            record(&on_error, error);
        }));
        let on_lost = fault.clone();
        device.set_device_lost_callback(move |reason, message| {
            record(
                &on_lost,
                GpuError::DeviceLost(format!("{reason:?}: {message}")),
            );
        });
        Ok(Self {
            device,
            queue,
            adapter_name: if info.name.trim().is_empty() {
                format!("{UNNAMED_ADAPTER} ({:?})", info.backend)
            } else {
                format!("{} ({:?})", info.name, info.backend)
            },
            limits,
            device_type: info.device_type,
            fault,
        })
    }

    /// A software rasterizer such as lavapipe: many threads are cheap to express, but barriers
    /// and small workgroups cost real CPU time.
    pub fn is_cpu(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }

    /// The error wgpu reported since the context was made, if any; the context is unusable after.
    pub fn check(&self) -> Result<()> {
        match self.fault.lock() {
            Ok(slot) => match slot.as_ref() {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            },
            Err(_) => Err(GpuError::DeviceLost("error state poisoned".into())),
        }
    }

    /// A uniform buffer holding `value`, for parameters fixed at load.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A zeroed storage buffer of `bytes` (at least 4), refused beyond the binding limit.
    pub fn scratch_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.check_binding_size(label, bytes)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// Refuses a storage buffer the device could not bind whole.
    fn check_binding_size(&self, label: &str, bytes: u64) -> Result<()> {
        let limit = self.limits.max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(GpuError::TooLarge {
                what: label.to_string(),
                needed: bytes,
                limit,
            });
        }
        Ok(())
    }

    /// A buffer the host can map to read `bytes` copied from a storage buffer.
    pub fn readback_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Copies the first `bytes` of `buffer` (a MAP_READ buffer whose copy was submitted) to the
    /// host. Natively this polls the device until the map resolves; in the browser it awaits the
    /// browser's callback, which is the only way a page can wait for the GPU.
    pub async fn read_bytes(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let slice = buffer.slice(..bytes);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        // A mapping fails when the device is gone; the recorded fault says so (DeviceLost), which
        // callers react to, where a bare readback error would not.
        let mapped = match rx.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the GPU dropped the readback".to_string()),
        };
        if let Err(reason) = mapped {
            self.check()?;
            return Err(GpuError::Readback(reason));
        }
        let data = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            view.to_vec()
        };
        buffer.unmap();
        self.check()?;
        Ok(data)
    }

    /// A storage buffer holding `bytes`, refused beyond the device's binding limit.
    pub fn storage_buffer(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        use wgpu::util::DeviceExt;
        self.check_binding_size(label, bytes.len() as u64)?;
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            }))
    }

    /// Waits for submitted work (natively a mapping only resolves while the device is polled).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))
    }

    /// Copies `buffer` (a MAP_READ buffer) to the host as f32s.
    pub async fn read_f32(&self, buffer: &wgpu::Buffer) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buffer, buffer.size()).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
