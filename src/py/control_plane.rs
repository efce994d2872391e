//! Seed 002's batch API, the binding: reads the requests and instances
//! (any objects with the seed's attributes: `RequestMetadata` /
//! `ExecutionInstance` dataclasses, the seed's own types, or look-alikes),
//! once per attribute, into [`plugin_scheduling_core::control_plane`] types,
//! runs the strategy there and builds `SchedulingDecision`s.

use std::collections::HashMap;

use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

use super::errors::{describe, field_error};
use plugin_scheduling_core::control_plane::{
    check_count, check_number, schedule, AdaptiveConfig, CostConfig, FieldError, Instance, Kind,
    ModelMatch, Order, Parallelism, Priority, Reason, Request, SloConfig, Strategy,
};

/// The Python enum members, from `plugin_scheduling.control_plane`.
struct Members {
    priorities: Vec<Py<PyAny>>,
    parallelism: Vec<Py<PyAny>>,
    request_type: Py<PyType>,
    instance_type: Py<PyType>,
}

static MEMBERS: PyOnceLock<Members> = PyOnceLock::new();

fn members(py: Python<'_>) -> PyResult<&'static Members> {
    MEMBERS.get_or_try_init(py, || {
        let module = py.import("plugin_scheduling.control_plane")?;
        let priority = module.getattr("RequestPriority")?;
        let parallelism = module.getattr("ParallelismType")?;
        let priorities = Priority::ALL
            .iter()
            .map(|p| priority.getattr(p.name()).map(Bound::unbind))
            .collect::<PyResult<_>>()?;
        let parallelism = [
            "TENSOR_PARALLEL",
            "PIPELINE_PARALLEL",
            "DATA_PARALLEL",
            "HYBRID",
        ]
        .iter()
        .map(|n| parallelism.getattr(*n).map(Bound::unbind))
        .collect::<PyResult<_>>()?;
        Ok(Members {
            priorities,
            parallelism,
            request_type: module
                .getattr("RequestMetadata")?
                .cast_into::<PyType>()?
                .unbind(),
            instance_type: module
                .getattr("ExecutionInstance")?
                .cast_into::<PyType>()?
                .unbind(),
        })
    })
}

/// Where a value came from, for messages (`requests[3]`), built only on error.
#[derive(Clone, Copy)]
struct Label<'a> {
    list: &'a str,
    index: Option<usize>,
}

impl Label<'_> {
    fn field(&self, name: &str) -> String {
        match self.index {
            Some(i) => format!("{}[{i}].{name}", self.list),
            None => format!("{}.{name}", self.list),
        }
    }
}

fn get<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    label: Label<'_>,
) -> PyResult<Bound<'py, PyAny>> {
    obj.getattr(name).map_err(|e| {
        if e.is_instance_of::<PyAttributeError>(obj.py()) {
            PyAttributeError::new_err(format!(
                "{} is missing: {} has no attribute {:?}",
                label.field(&name.to_string_lossy()),
                describe(obj),
                name.to_string_lossy()
            ))
        } else {
            e
        }
    })
}

/// Reads an input's attributes. An instance of exactly our dataclass (no
/// properties or other descriptors on its class) is read from its
/// `__dict__`, which skips the type lookup each `getattr` does; anything
/// else (a subclass, the seed's own types, a look-alike) through `getattr`.
struct Reader<'a, 'py> {
    obj: &'a Bound<'py, PyAny>,
    dict: Option<Bound<'py, PyDict>>,
    label: Label<'a>,
}

impl<'a, 'py> Reader<'a, 'py> {
    fn new(obj: &'a Bound<'py, PyAny>, label: Label<'a>, own: &Py<PyType>) -> PyResult<Self> {
        let dict = if obj.get_type().is(own) {
            obj.getattr(intern!(obj.py(), "__dict__"))?
                .cast_into::<PyDict>()
                .ok()
        } else {
            None
        };
        Ok(Reader { obj, dict, label })
    }

    fn get(&self, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(dict) = &self.dict {
            if let Some(value) = dict.get_item(name)? {
                return Ok(value);
            }
        }
        get(self.obj, name, self.label)
    }
}

fn bad_type(label: Label<'_>, name: &str, expected: &str, value: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "{} must be {expected}, got {}",
        label.field(name),
        describe(value)
    ))
}

fn out_of_range(label: Label<'_>, error: FieldError, value: &Bound<'_, PyAny>) -> PyErr {
    field_error(&label.field(error.field), &error, value)
}

/// A real number (int or float, not str/bool-as-text), finite, `>= 0` when asked.
fn number(
    value: &Bound<'_, PyAny>,
    name: &'static str,
    non_negative: bool,
    label: Label<'_>,
) -> PyResult<f64> {
    if value.is_instance_of::<PyString>() || value.is_instance_of::<PyBool>() {
        return Err(bad_type(label, name, "a number", value));
    }
    let v: f64 = value
        .extract()
        .map_err(|_| bad_type(label, name, "a number", value))?;
    check_number(name, v, non_negative).map_err(|e| out_of_range(label, e, value))
}

fn optional_number(
    value: &Bound<'_, PyAny>,
    name: &'static str,
    label: Label<'_>,
) -> PyResult<Option<f64>> {
    if value.is_none() {
        return Ok(None);
    }
    number(value, name, true, label).map(Some)
}

fn count(
    value: &Bound<'_, PyAny>,
    name: &'static str,
    minimum: i64,
    label: Label<'_>,
) -> PyResult<u64> {
    if !value.is_instance_of::<PyInt>() || value.is_instance_of::<PyBool>() {
        return Err(bad_type(label, name, "an int", value));
    }
    let v: i64 = value
        .extract()
        .map_err(|_| bad_type(label, name, "an int", value))?;
    check_count(name, v, minimum).map_err(|e| out_of_range(label, e, value))
}

fn priority(value: &Bound<'_, PyAny>, label: Label<'_>) -> PyResult<Priority> {
    let py = value.py();
    let known = members(py)?;
    for (member, p) in known.priorities.iter().zip(Priority::ALL) {
        if member.is(value) {
            return Ok(p);
        }
    }
    // The seed's own enum (or another with the same member names), or a name.
    let name = if let Ok(s) = value.cast::<PyString>() {
        Some(s.to_string_lossy().into_owned())
    } else {
        match value.getattr(intern!(py, "name")) {
            Ok(n) => n.extract::<String>().ok(),
            Err(_) => None,
        }
    };
    name.as_deref()
        .and_then(Priority::from_name)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "{} must be a RequestPriority (CRITICAL, HIGH, NORMAL, LOW or BACKGROUND), got {}",
                label.field("priority"),
                describe(value)
            ))
        })
}

/// Seconds since the epoch from a number or a `datetime` (its `timestamp()`).
fn timestamp(value: &Bound<'_, PyAny>, label: Label<'_>) -> PyResult<f64> {
    if value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>() {
        return number(value, "arrival_time", false, label);
    }
    let py = value.py();
    if value.hasattr(intern!(py, "timestamp"))? && !value.is_instance_of::<PyString>() {
        let seconds = value.call_method0(intern!(py, "timestamp"))?;
        return number(&seconds, "arrival_time", false, label);
    }
    Err(bad_type(
        label,
        "arrival_time",
        "a timestamp in seconds or a datetime",
        value,
    ))
}

/// The distinct model names of the instances; a request's model becomes an id.
struct Models<'py> {
    /// Each distinct name: the first object seen (for an identity hit) and
    /// its text (`None` for a name that is not valid Unicode, e.g. holding a
    /// lone surrogate: compared by Python's `==`, as the seed compares).
    names: Vec<(Bound<'py, PyString>, Option<String>)>,
}

impl<'py> Models<'py> {
    fn id_of(&mut self, name: &Bound<'py, PyString>, add: bool) -> PyResult<Option<u32>> {
        if let Some(i) = self.names.iter().position(|(known, _)| known.is(name)) {
            return Ok(Some(i as u32));
        }
        let text = name.to_str().ok();
        let found = match text {
            Some(text) => self
                .names
                .iter()
                .position(|(_, known)| known.as_deref() == Some(text)),
            None => {
                let mut found = None;
                for (i, (known, utf8)) in self.names.iter().enumerate() {
                    if utf8.is_none() && known.as_any().eq(name)? {
                        found = Some(i);
                        break;
                    }
                }
                found
            }
        };
        if let Some(i) = found {
            return Ok(Some(i as u32));
        }
        if add {
            self.names.push((name.clone(), text.map(str::to_owned)));
            return Ok(Some((self.names.len() - 1) as u32));
        }
        Ok(None)
    }
}

fn read_request<'py>(
    obj: &Bound<'py, PyAny>,
    label: Label<'_>,
    models: Option<&mut Models<'py>>,
) -> PyResult<(Request, Bound<'py, PyAny>)> {
    let py = obj.py();
    let reader = Reader::new(obj, label, &members(py)?.request_type)?;
    let id = reader.get(intern!(py, "request_id"))?;
    let prio = priority(&reader.get(intern!(py, "priority"))?, label)?;
    let arrival_s = timestamp(&reader.get(intern!(py, "arrival_time"))?, label)?;
    let model_value = reader.get(intern!(py, "model_name"))?;
    let model = if model_value.is_none() {
        ModelMatch::Any
    } else {
        let name = model_value
            .cast::<PyString>()
            .map_err(|_| bad_type(label, "model_name", "a str or None", &model_value))?;
        match models {
            None => ModelMatch::Any,
            Some(m) => match m.id_of(name, false)? {
                Some(id) => ModelMatch::Model(id),
                None => ModelMatch::Unserved,
            },
        }
    };
    let tokens = reader.get(intern!(py, "max_tokens"))?;
    let max_tokens = if tokens.is_none() {
        None
    } else {
        Some(count(&tokens, "max_tokens", 0, label)?)
    };
    let slo_deadline_ms = optional_number(
        &reader.get(intern!(py, "slo_deadline_ms"))?,
        "slo_deadline_ms",
        label,
    )?;
    let cost_budget = optional_number(
        &reader.get(intern!(py, "cost_budget"))?,
        "cost_budget",
        label,
    )?;
    Ok((
        Request {
            priority: prio,
            arrival_s,
            model,
            max_tokens,
            slo_deadline_ms,
            cost_budget,
        },
        id,
    ))
}

/// What a decision copies from its instance, built once per instance.
struct InstanceRefs {
    id: Py<PyAny>,
    tensor_parallel_size: Py<PyAny>,
    pipeline_parallel_size: Py<PyAny>,
    latency: Py<PyAny>,
}

fn read_instance<'py>(
    obj: &Bound<'py, PyAny>,
    label: Label<'_>,
    models: &mut Models<'py>,
) -> PyResult<(Instance, InstanceRefs)> {
    let py = obj.py();
    let reader = Reader::new(obj, label, &members(py)?.instance_type)?;
    let id = reader.get(intern!(py, "instance_id"))?;
    let model_value = reader.get(intern!(py, "model_name"))?;
    let name = model_value
        .cast::<PyString>()
        .map_err(|_| bad_type(label, "model_name", "a str", &model_value))?;
    let model = models.id_of(name, true)?.unwrap_or(u32::MAX);
    let tp_obj = reader.get(intern!(py, "tensor_parallel_size"))?;
    let pp_obj = reader.get(intern!(py, "pipeline_parallel_size"))?;
    let instance = Instance {
        model,
        tensor_parallel_size: count(&tp_obj, "tensor_parallel_size", 1, label)?,
        pipeline_parallel_size: count(&pp_obj, "pipeline_parallel_size", 1, label)?,
        gpu_count: count(
            &reader.get(intern!(py, "gpu_count"))?,
            "gpu_count",
            0,
            label,
        )?,
        can_accept_request: reader.get(intern!(py, "can_accept_request"))?.is_truthy()?,
        current_load: number(
            &reader.get(intern!(py, "current_load"))?,
            "current_load",
            true,
            label,
        )?,
        max_concurrency: count(
            &reader.get(intern!(py, "max_concurrency"))?,
            "max_concurrency",
            0,
            label,
        )? as f64,
        avg_latency_ms: number(
            &reader.get(intern!(py, "avg_latency_ms"))?,
            "avg_latency_ms",
            true,
            label,
        )?,
        throughput_tokens_per_sec: number(
            &reader.get(intern!(py, "throughput_tokens_per_sec"))?,
            "throughput_tokens_per_sec",
            true,
            label,
        )?,
    };
    let refs = InstanceRefs {
        id: id.unbind(),
        tensor_parallel_size: tp_obj.unbind(),
        pipeline_parallel_size: pp_obj.unbind(),
        latency: PyFloat::new(py, instance.avg_latency_ms)
            .into_any()
            .unbind(),
    };
    Ok((instance, refs))
}

fn items<'py>(seq: &Bound<'py, PyAny>, what: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(list) = seq.cast::<PyList>() {
        return Ok(list.iter().collect());
    }
    if seq.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a list, got {}",
            describe(seq)
        )));
    }
    seq.try_iter()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be a list, got {}", describe(seq))))?
        .collect()
}

/// A strategy from a policy's `kind` and its settings.
fn strategy(
    kind: &str,
    urgency_threshold: f64,
    price_per_gpu_hour: f64,
    high: f64,
    low: f64,
) -> PyResult<Strategy> {
    for (name, value) in [
        ("urgency_threshold", urgency_threshold),
        ("price_per_gpu_hour", price_per_gpu_hour),
        ("high_load_threshold", high),
        ("low_load_threshold", low),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(PyValueError::new_err(format!(
                "policy.{name} must be a finite number >= 0, got {value}"
            )));
        }
    }
    let slo = SloConfig { urgency_threshold };
    let cost = CostConfig { price_per_gpu_hour };
    Ok(match kind {
        "fifo" => Strategy::Fifo,
        "priority" => Strategy::Priority,
        "slo_aware" => Strategy::SloAware(slo),
        "cost_optimized" => Strategy::CostOptimized(cost),
        "adaptive" => Strategy::Adaptive(AdaptiveConfig {
            high_load_threshold: high,
            low_load_threshold: low,
            slo,
            cost,
        }),
        other => {
            return Err(PyValueError::new_err(format!(
                "policy kind {other:?} has no batch schedule (built-ins: fifo, priority, slo_aware, cost_optimized, adaptive)"
            )))
        }
    })
}

/// Each distinct reason's string, built once per call (most decisions of a
/// batch share a handful).
struct Reasons<'py> {
    prefix: Option<String>,
    cache: HashMap<(u8, u64, bool), Bound<'py, PyAny>>,
}

impl<'py> Reasons<'py> {
    fn get(&mut self, py: Python<'py>, reason: &Reason) -> Bound<'py, PyAny> {
        let key = match *reason {
            Reason::Fifo => (0, 0, false),
            Reason::Priority { priority } => (1, priority as u64, false),
            Reason::Slo { urgency, urgent } => (2, urgency.to_bits(), urgent),
            Reason::Cost { cost, slo_met } => (3, cost.to_bits(), slo_met),
        };
        let prefix = &self.prefix;
        self.cache
            .entry(key)
            .or_insert_with(|| {
                let text = match prefix {
                    Some(prefix) => format!("{prefix}{reason}"),
                    None => reason.to_string(),
                };
                PyString::new(py, &text).into_any()
            })
            .clone()
    }
}

fn adaptive_prefix(kind: Kind, cause: &str) -> String {
    format!("Adaptive[{}] ({cause}): ", kind.name())
}

/// `_schedule_batch(kind, requests, instances, now, as_given, urgency_threshold,
/// price_per_gpu_hour, high_load_threshold, low_load_threshold)`
/// -> `(decisions, chosen kind or None, why or None)`.
#[pyfunction]
#[pyo3(signature = (kind, requests, instances, now, as_given, urgency_threshold=0.7, price_per_gpu_hour=2.5, high_load_threshold=0.8, low_load_threshold=0.3))]
#[allow(clippy::too_many_arguments)]
pub fn _schedule_batch<'py>(
    py: Python<'py>,
    kind: &str,
    requests: &Bound<'py, PyAny>,
    instances: &Bound<'py, PyAny>,
    now: f64,
    as_given: bool,
    urgency_threshold: f64,
    price_per_gpu_hour: f64,
    high_load_threshold: f64,
    low_load_threshold: f64,
) -> PyResult<Bound<'py, PyTuple>> {
    let plan = strategy(
        kind,
        urgency_threshold,
        price_per_gpu_hour,
        high_load_threshold,
        low_load_threshold,
    )?;
    let known = members(py)?;
    let mut models = Models { names: Vec::new() };
    let instance_objs = items(instances, "instances")?;
    let mut core_instances = Vec::with_capacity(instance_objs.len());
    let mut refs = Vec::with_capacity(instance_objs.len());
    for (i, obj) in instance_objs.iter().enumerate() {
        let (instance, r) = read_instance(
            obj,
            Label {
                list: "instances",
                index: Some(i),
            },
            &mut models,
        )?;
        core_instances.push(instance);
        refs.push(r);
    }
    let request_objs = items(requests, "requests")?;
    let mut core_requests = Vec::with_capacity(request_objs.len());
    let mut ids = Vec::with_capacity(request_objs.len());
    for (i, obj) in request_objs.iter().enumerate() {
        let (request, id) = read_request(
            obj,
            Label {
                list: "requests",
                index: Some(i),
            },
            Some(&mut models),
        )?;
        core_requests.push(request);
        ids.push(id);
    }
    let order = if as_given {
        Order::AsGiven
    } else {
        Order::Strategy
    };
    let outcome = schedule(&plan, &core_requests, &core_instances, now, order);
    let (chosen, cause) = match outcome.adaptive {
        Some((k, c)) => (Some(k.name()), Some(c.text())),
        None => (None, None),
    };
    let mut reasons = Reasons {
        prefix: outcome.adaptive.map(|(k, c)| adaptive_prefix(k, c.text())),
        cache: HashMap::new(),
    };
    let zero = PyFloat::new(py, 0.0).into_any();
    let decisions = PyList::empty(py);
    for d in &outcome.decisions {
        let target = &refs[d.instance];
        let parallelism = &known.parallelism[d.parallelism as usize];
        let cost = if d.estimated_cost == 0.0 {
            zero.clone()
        } else {
            PyFloat::new(py, d.estimated_cost).into_any()
        };
        let decision = SchedulingDecision {
            request_id: ids[d.request].clone().unbind(),
            target_instance_id: target.id.clone_ref(py),
            parallelism_strategy: parallelism.clone_ref(py),
            tensor_parallel_size: target.tensor_parallel_size.clone_ref(py),
            pipeline_parallel_size: target.pipeline_parallel_size.clone_ref(py),
            estimated_latency_ms: target.latency.clone_ref(py),
            estimated_cost: cost.unbind(),
            reason: reasons.get(py, &d.reason).unbind(),
        };
        decisions.append(Bound::new(py, decision)?)?;
    }
    PyTuple::new(
        py,
        [
            decisions.into_any(),
            chosen.into_pyobject(py)?.into_any(),
            cause.into_pyobject(py)?.into_any(),
        ],
    )
}

/// `_prioritize_batch(kind, requests, now, urgency_threshold=0.7)` -> a new
/// list of the same request objects in the strategy's order.
#[pyfunction]
#[pyo3(signature = (kind, requests, now, urgency_threshold=0.7))]
pub fn _prioritize_batch<'py>(
    py: Python<'py>,
    kind: &str,
    requests: &Bound<'py, PyAny>,
    now: f64,
    urgency_threshold: f64,
) -> PyResult<Bound<'py, PyList>> {
    let plan = strategy(kind, urgency_threshold, 0.0, 0.0, 0.0)?;
    let objs = items(requests, "requests")?;
    let core: Vec<Request> = objs
        .iter()
        .enumerate()
        .map(|(i, obj)| {
            read_request(
                obj,
                Label {
                    list: "requests",
                    index: Some(i),
                },
                None,
            )
            .map(|r| r.0)
        })
        .collect::<PyResult<_>>()?;
    let order = plugin_scheduling_core::control_plane::prioritize(&plan, &core, now);
    PyList::new(py, order.into_iter().map(|i| &objs[i]))
}

/// Validates one `RequestMetadata` (`kind="request"`) or `ExecutionInstance`
/// (`kind="instance"`) as `schedule` would read it; raises naming the field.
#[pyfunction]
pub fn _check_item(obj: &Bound<'_, PyAny>, kind: &str) -> PyResult<()> {
    let name = obj.get_type().name()?.to_string();
    let label = Label {
        list: &name,
        index: None,
    };
    match kind {
        "request" => read_request(obj, label, None).map(|_| ()),
        "instance" => read_instance(obj, label, &mut Models { names: Vec::new() }).map(|_| ()),
        other => Err(PyValueError::new_err(format!(
            "kind must be 'request' or 'instance', got {other:?}"
        ))),
    }
}

/// Seed 002's `SchedulingDecision`: where a request goes and why.
// Not `dict`/`weakref`: that would make every decision GC-tracked, and a
// batch of them trigger collections (measured: ~10% of a call).
#[pyclass(module = "plugin_scheduling.control_plane")]
pub struct SchedulingDecision {
    #[pyo3(get, set)]
    request_id: Py<PyAny>,
    #[pyo3(get, set)]
    target_instance_id: Py<PyAny>,
    #[pyo3(get, set)]
    parallelism_strategy: Py<PyAny>,
    #[pyo3(get, set)]
    tensor_parallel_size: Py<PyAny>,
    #[pyo3(get, set)]
    pipeline_parallel_size: Py<PyAny>,
    #[pyo3(get, set)]
    estimated_latency_ms: Py<PyAny>,
    #[pyo3(get, set)]
    estimated_cost: Py<PyAny>,
    #[pyo3(get, set)]
    reason: Py<PyAny>,
}

const FIELDS: [&str; 8] = [
    "request_id",
    "target_instance_id",
    "parallelism_strategy",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "estimated_latency_ms",
    "estimated_cost",
    "reason",
];

impl SchedulingDecision {
    fn values<'py>(&self, py: Python<'py>) -> [Bound<'py, PyAny>; 8] {
        [
            self.request_id.bind(py).clone(),
            self.target_instance_id.bind(py).clone(),
            self.parallelism_strategy.bind(py).clone(),
            self.tensor_parallel_size.bind(py).clone(),
            self.pipeline_parallel_size.bind(py).clone(),
            self.estimated_latency_ms.bind(py).clone(),
            self.estimated_cost.bind(py).clone(),
            self.reason.bind(py).clone(),
        ]
    }
}

#[pymethods]
impl SchedulingDecision {
    #[new]
    #[pyo3(signature = (request_id, target_instance_id, parallelism_strategy=None, tensor_parallel_size=None, pipeline_parallel_size=None, estimated_latency_ms=None, estimated_cost=None, reason=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        request_id: Py<PyAny>,
        target_instance_id: Py<PyAny>,
        parallelism_strategy: Option<&Bound<'_, PyAny>>,
        tensor_parallel_size: Option<&Bound<'_, PyAny>>,
        pipeline_parallel_size: Option<&Bound<'_, PyAny>>,
        estimated_latency_ms: Option<&Bound<'_, PyAny>>,
        estimated_cost: Option<&Bound<'_, PyAny>>,
        reason: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let label = Label {
            list: "SchedulingDecision",
            index: None,
        };
        let known = members(py)?;
        let parallelism = match parallelism_strategy {
            None => known.parallelism[Parallelism::Tensor as usize].clone_ref(py),
            Some(p) if known.parallelism.iter().any(|m| m.is(p)) => p.clone().unbind(),
            Some(p) => {
                return Err(bad_type(
                    label,
                    "parallelism_strategy",
                    "a ParallelismType",
                    p,
                ));
            }
        };
        let size = |value: Option<&Bound<'_, PyAny>>, name: &'static str| -> PyResult<Py<PyAny>> {
            match value {
                None => Ok(1i64.into_pyobject(py)?.into_any().unbind()),
                Some(v) => count(v, name, 1, label).map(|_| v.clone().unbind()),
            }
        };
        let float = |value: Option<&Bound<'_, PyAny>>, name: &'static str| -> PyResult<Py<PyAny>> {
            let v = match value {
                None => 0.0,
                Some(v) => number(v, name, true, label)?,
            };
            Ok(PyFloat::new(py, v).into_any().unbind())
        };
        let reason = match reason {
            None => PyString::new(py, "").into_any().unbind(),
            Some(r) if r.is_instance_of::<PyString>() => r.clone().unbind(),
            Some(r) => return Err(bad_type(label, "reason", "a str", r)),
        };
        Ok(SchedulingDecision {
            request_id,
            target_instance_id,
            parallelism_strategy: parallelism,
            tensor_parallel_size: size(tensor_parallel_size, "tensor_parallel_size")?,
            pipeline_parallel_size: size(pipeline_parallel_size, "pipeline_parallel_size")?,
            estimated_latency_ms: float(estimated_latency_ms, "estimated_latency_ms")?,
            estimated_cost: float(estimated_cost, "estimated_cost")?,
            reason,
        })
    }

    #[classattr]
    fn __match_args__() -> (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ) {
        (
            FIELDS[0], FIELDS[1], FIELDS[2], FIELDS[3], FIELDS[4], FIELDS[5], FIELDS[6], FIELDS[7],
        )
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mut out = String::from("SchedulingDecision(");
        for (i, (name, value)) in FIELDS.iter().zip(self.values(py)).enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(name);
            out.push('=');
            out.push_str(&value.repr()?.to_string_lossy());
        }
        out.push(')');
        Ok(out)
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<SchedulingDecision>() else {
            return Ok(py.NotImplemented());
        };
        let equal = match op {
            CompareOp::Eq | CompareOp::Ne => {
                let theirs = other.borrow().values(py);
                let mut same = true;
                for (a, b) in self.values(py).iter().zip(theirs.iter()) {
                    if !a.eq(b)? {
                        same = false;
                        break;
                    }
                }
                same
            }
            _ => return Ok(py.NotImplemented()),
        };
        let result = if matches!(op, CompareOp::Eq) {
            equal
        } else {
            !equal
        };
        Ok(result.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    /// Unhashable, like the seed's (mutable) dataclass.
    #[classattr]
    #[pyo3(name = "__hash__")]
    fn hash_none(py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let args = PyTuple::new(py, slf.borrow().values(py))?;
        PyTuple::new(py, [slf.get_type().into_any(), args.into_any()])
    }
}
