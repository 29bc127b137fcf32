//! The adapter, device and queue, requested within default WebGPU limits so what works here works
//! in every browser.

use crate::error::{GpuError, Result};

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"
    pub adapter_name: String,
    pub limits: wgpu::Limits,
}

impl GpuContext {
    /// The first adapter of any backend compiled in, with the default (WebGPU) limits.
    pub async fn new() -> Result<Self> {
        // WGPU_BACKEND etc. from the environment, as wgpu's own tools honour them.
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
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
        Ok(Self {
            device,
            queue,
            adapter_name: format!("{} ({:?})", info.name, info.backend),
            limits,
        })
    }

    /// A storage buffer holding `bytes`, refused beyond the device's binding limit.
    pub fn storage_buffer(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        use wgpu::util::DeviceExt;
        let limit = self.limits.max_storage_buffer_binding_size;
        if bytes.len() as u64 > limit {
            return Err(GpuError::TooLarge {
                what: label.to_string(),
                needed: bytes.len() as u64,
                limit,
            });
        }
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            }))
    }

    /// An output storage buffer of `len` f32s and a mappable buffer to copy it into.
    pub fn output_buffers(&self, label: &str, len: usize) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let size = (len * 4) as u64;
        let limit = self.limits.max_storage_buffer_binding_size;
        if size > limit {
            return Err(GpuError::TooLarge {
                what: label.to_string(),
                needed: size,
                limit,
            });
        }
        let out = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok((out, readback))
    }

    /// Waits for submitted work (natively a mapping only resolves while the device is polled).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))
    }

    /// Copies `buffer` (a MAP_READ buffer) to the host as f32s. Native only for now: it blocks on
    /// the device poll, which the browser does not allow; the browser readback arrives with the
    /// engine.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn read_f32(&self, buffer: &wgpu::Buffer) -> Result<Vec<f32>> {
        let slice = buffer.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let data = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        buffer.unmap();
        Ok(data)
    }
}
