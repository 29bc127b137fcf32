//! Building blocks every kernel family uses: shader assembly, explicit bind group layouts (so one
//! bind group serves several entry points, e.g. matvec and matmul), pipelines and bind groups.
//! Everything here runs at load; encoding a step only sets pipelines and bind groups.

use crate::context::GpuContext;

/// What a binding slot holds, in binding order.
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    Uniform,
    Read,
    ReadWrite,
}

/// The `Step` struct all kernels read (kernels/step.wgsl), with the values of one forward call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    pub n: u32,
    pub start: u32,
    pub out_row0: u32,
    pub out_rows: u32,
}

/// A shader module made of shared WGSL parts followed by the family's own file.
pub fn module(ctx: &GpuContext, label: &str, parts: &[&str]) -> wgpu::ShaderModule {
    let mut source = String::from(include_str!("kernels/step.wgsl"));
    for part in parts {
        source.push('\n');
        source.push_str(part);
    }
    ctx.device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        })
}

pub fn layout(ctx: &GpuContext, label: &str, slots: &[Slot]) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match slot {
                Slot::Uniform => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Slot::Read | Slot::ReadWrite => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: matches!(slot, Slot::Read),
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
            },
            count: None,
        })
        .collect();
    ctx.device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries: &entries,
        })
}

pub fn pipeline(
    ctx: &GpuContext,
    layout: &wgpu::BindGroupLayout,
    module: &wgpu::ShaderModule,
    entry: &str,
) -> wgpu::ComputePipeline {
    let pipeline_layout = ctx
        .device
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(layout)],
            immediate_size: 0,
        });
    ctx.device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
}

/// A bind group with `buffers[i]` (whole) at binding i.
pub fn bind(
    ctx: &GpuContext,
    label: &str,
    layout: &wgpu::BindGroupLayout,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &entries,
    })
}

/// Records one dispatch.
pub fn dispatch(
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    groups: (u32, u32),
) {
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, bind_group, &[]);
    pass.dispatch_workgroups(groups.0.max(1), groups.1.max(1), 1);
}

/// `n` items in workgroups of `size`, as a count of groups.
pub fn groups_for(n: usize, size: usize) -> u32 {
    n.div_ceil(size) as u32
}
