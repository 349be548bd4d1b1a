//! How a metric is declared once: [`metric_set!`] turns one line per metric (field, type, name,
//! labels, and its doc comment, which is also its help text) into the struct field, the
//! registration on tally's registry and an entry of a [`MetricSpec`] table, from which the
//! README's metrics table is generated ([`markdown_table`], `tally metrics-doc`).

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// One metric as declared: what Prometheus shows of it and what the docs list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    pub name: &'static str,
    /// The doc comment, line by line concatenated (each line starts with a space).
    pub doc: &'static str,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    pub labels: &'static [&'static str],
    /// Histogram bucket bounds (empty for other kinds).
    pub buckets: &'static [f64],
}

impl MetricSpec {
    /// The help text: the doc comment as one line.
    pub fn help(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// A Prometheus metric type tally declares, and how it is built from its [`MetricSpec`].
pub trait Declare: Collector + Clone + Sized + 'static {
    /// The kind shown in the docs.
    const KIND: &'static str;

    fn build(spec: &MetricSpec) -> prometheus::Result<Self>;

    /// Build the metric and register it on `registry`. A declaration the client library
    /// refuses is a bug in this file, caught by any test that builds [`super::Metrics`].
    fn declare(registry: &Registry, spec: &MetricSpec) -> Self {
        let metric = Self::build(spec).expect("a valid metric declaration");
        registry
            .register(Box::new(metric.clone()))
            .expect("each metric is registered once");
        metric
    }
}

fn opts(spec: &MetricSpec) -> Opts {
    Opts::new(spec.name, spec.help())
}

fn histogram_opts(spec: &MetricSpec) -> HistogramOpts {
    HistogramOpts::new(spec.name, spec.help()).buckets(spec.buckets.to_vec())
}

impl Declare for IntCounter {
    const KIND: &'static str = "counter";
    fn build(spec: &MetricSpec) -> prometheus::Result<Self> {
        IntCounter::with_opts(opts(spec))
    }
}

impl Declare for IntCounterVec {
    const KIND: &'static str = "counter";
    fn build(spec: &MetricSpec) -> prometheus::Result<Self> {
        IntCounterVec::new(opts(spec), spec.labels)
    }
}

impl Declare for IntGauge {
    const KIND: &'static str = "gauge";
    fn build(spec: &MetricSpec) -> prometheus::Result<Self> {
        IntGauge::with_opts(opts(spec))
    }
}

impl Declare for IntGaugeVec {
    const KIND: &'static str = "gauge";
    fn build(spec: &MetricSpec) -> prometheus::Result<Self> {
        IntGaugeVec::new(opts(spec), spec.labels)
    }
}

impl Declare for Gauge {
    const KIND: &'static str = "gauge";
    fn build(spec: &MetricSpec) -> prometheus::Result<Self> {
        Gauge::with_opts(opts(spec))
    }
}

impl Declare for GaugeVec {
    const KIND: &'static str = "gauge";
    fn build(spec: &MetricSpec) -> prometheus::Result<Self> {
        GaugeVec::new(opts(spec), spec.labels)
    }
}

impl Declare for Histogram {
    const KIND: &'static str = "histogram";
    fn build(spec: &MetricSpec) -> prometheus::Result<Self> {
        Histogram::with_opts(histogram_opts(spec))
    }
}

impl Declare for HistogramVec {
    const KIND: &'static str = "histogram";
    fn build(spec: &MetricSpec) -> prometheus::Result<Self> {
        HistogramVec::new(histogram_opts(spec), spec.labels)
    }
}

/// Declare a struct of metrics. Other fields come first, in their own braces; then one entry
/// per metric: its doc comment (its help text), `field: Type = "name"`, then optionally its
/// labels in brackets and `buckets [..]` for a histogram. The struct gets a `declare(registry,
/// other fields…)` constructor, and `$TABLE` lists every metric in declaration order.
macro_rules! metric_set {
    (
        $(#[$struct_meta:meta])*
        pub struct $Struct:ident {
            $( $(#[$other_meta:meta])* $other_vis:vis $other:ident: $other_ty:ty, )*
        }
        metrics $TABLE:ident {
            $(
                $(#[doc = $doc:literal])+
                $field:ident: $ty:ty = $name:literal
                    $([$($label:literal),+ $(,)?])?
                    $(buckets [$($bucket:literal),+ $(,)?])?;
            )+
        }
    ) => {
        $(#[$struct_meta])*
        pub struct $Struct {
            $( $(#[$other_meta])* $other_vis $other: $other_ty, )*
            $( $(#[doc = $doc])+ pub $field: $ty, )+
        }

        #[doc = concat!("Every metric of [`", stringify!($Struct), "`], in declaration order.")]
        pub const $TABLE: &[$crate::metrics::declare::MetricSpec] = &[$(
            $crate::metrics::declare::MetricSpec {
                name: $name,
                doc: concat!($($doc),+),
                kind: <$ty as $crate::metrics::declare::Declare>::KIND,
                labels: &[$($($label),+)?],
                buckets: &[$($($bucket),+)?],
            },
        )+];

        impl $Struct {
            /// Declare every metric on `registry`; the other fields are given.
            fn declare(registry: &prometheus::Registry, $($other: $other_ty),*) -> $Struct {
                let mut specs = $TABLE.iter();
                $Struct {
                    $( $other, )*
                    $(
                        $field: <$ty as $crate::metrics::declare::Declare>::declare(
                            registry,
                            specs.next().expect("one spec per metric"),
                        ),
                    )+
                }
            }
        }
    };
}

pub(crate) use metric_set;

/// The README's metrics table: one row per metric of `tables`, in order.
pub fn markdown_table(tables: &[&[MetricSpec]]) -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for spec in tables.iter().flat_map(|t| t.iter()) {
        let labels: Vec<String> = spec.labels.iter().map(|l| format!("`{l}`")).collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            spec.name,
            spec.kind,
            labels.join(", "),
            spec.help().replace('|', "\\|")
        ));
    }
    out
}
