//! Graph simplifications that importers apply, each preserving [`Graph::run`]'s results (up to
//! floating-point rounding) and never adding depth.

use std::collections::HashMap;

use super::{Graph, Node, Op, ValueId};
use crate::Result;

/// Highest degree [`fuse_polynomials`] builds; beyond it the ops stay separate.
const MAX_FUSED_DEGREE: usize = 8;

/// All simplifications in order: BatchNorm folding, polynomial fusion, dead-node removal.
pub fn simplify(g: &Graph) -> Result<Graph> {
    dead_code(&fuse_polynomials(&fold_channel_affine(g)?)?)
}

/// How many nodes read each value (graph outputs count as readers).
fn readers(g: &Graph) -> Vec<usize> {
    let mut r = vec![0usize; g.shapes.len()];
    for n in &g.nodes {
        for v in &n.inputs {
            r[v.0] += 1;
        }
    }
    for v in &g.outputs {
        r[v.0] += 1;
    }
    r
}

/// Rebuilds `g` node by node: `f` returns the op and (old) inputs to emit for a node, or
/// `None` to drop it and alias its output to its first input.
fn rebuild(g: &Graph, mut f: impl FnMut(&Node) -> Option<(Op, Vec<ValueId>)>) -> Result<Graph> {
    let mut out = Graph::new();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for v in &g.inputs {
        map.insert(*v, out.add_input(g.name(*v), g.shape(*v))?);
    }
    for n in &g.nodes {
        match f(n) {
            Some((op, ins)) => {
                let ins: Vec<ValueId> = ins.iter().map(|v| map[v]).collect();
                map.insert(n.output, out.push(&n.name, op, &ins)?);
            }
            None => {
                map.insert(n.output, map[&n.inputs[0]]);
            }
        }
    }
    for v in &g.outputs {
        out.add_output(map[v])?;
    }
    Ok(out)
}

/// Folds each [`Op::ChannelAffine`] (an inference BatchNorm) into the convolution or dense
/// layer before it, when that layer feeds nothing else: `W ← diag(s)·W`, `b ← s·b + t`.
/// One that cannot be folded stays, as a per-channel plaintext multiply-add.
pub fn fold_channel_affine(g: &Graph) -> Result<Graph> {
    let readers = readers(g);
    let producer: HashMap<ValueId, &Node> = g.nodes.iter().map(|n| (n.output, n)).collect();
    // Affine nodes that fold, keyed by the producer they fold into.
    let mut folds: HashMap<ValueId, &Node> = HashMap::new();
    for n in &g.nodes {
        if let Op::ChannelAffine { .. } = n.op {
            let x = n.inputs[0];
            let foldable = matches!(
                producer.get(&x).map(|p| &p.op),
                Some(Op::Conv2d(_) | Op::Linear { .. })
            );
            if foldable && readers[x.0] == 1 {
                folds.insert(x, n);
            }
        }
    }
    let folded: Vec<ValueId> = folds.values().map(|n| n.output).collect();
    rebuild(g, |n| {
        if folded.contains(&n.output) {
            return None;
        }
        let Some(Node {
            op: Op::ChannelAffine { scale, shift },
            ..
        }) = folds.get(&n.output)
        else {
            return Some((n.op.clone(), n.inputs.clone()));
        };
        let op = match &n.op {
            Op::Conv2d(cv) => {
                let mut cv = cv.clone();
                for (o, mut w) in cv.weight.outer_iter_mut().enumerate() {
                    w *= scale[o];
                    cv.bias[o] = scale[o] * cv.bias[o] + shift[o];
                }
                Op::Conv2d(cv)
            }
            Op::Linear { weight, bias } => {
                let mut weight = weight.clone();
                for (o, mut w) in weight.outer_iter_mut().enumerate() {
                    w *= scale[o];
                }
                Op::Linear {
                    weight,
                    bias: bias * scale + shift,
                }
            }
            other => other.clone(),
        };
        Some((op, n.inputs.clone()))
    })
}

/// Polynomial arithmetic on coefficient vectors (lowest degree first).
fn poly_add(a: &[f64], b: &[f64], sign: f64) -> Vec<f64> {
    (0..a.len().max(b.len()))
        .map(|i| a.get(i).copied().unwrap_or(0.0) + sign * b.get(i).copied().unwrap_or(0.0))
        .collect()
}

fn poly_mul(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0; a.len() + b.len() - 1];
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            c[i + j] += x * y;
        }
    }
    c
}

/// `outer(inner(x))`, by Horner's rule on polynomials.
fn poly_compose(outer: &[f64], inner: &[f64]) -> Vec<f64> {
    let c = outer.iter().rev().fold(vec![0.0], |acc, &c| {
        poly_add(&poly_mul(&acc, inner), &[c], 1.0)
    });
    trim(c)
}

fn trim(mut c: Vec<f64>) -> Vec<f64> {
    while c.len() > 1 && c.last() == Some(&0.0) {
        c.pop();
    }
    c
}

/// Fuses element-wise chains on one value into a single [`Op::Poly`]: `Mul(x, x)`,
/// `Pow(x, 2)` (imported as `Poly`), products and sums by scalars and sums of such terms, as
/// PyTorch exports `a*x**2 + b*x + c` (Pow, Mul, Mul, Add, Add), become `Poly([c, b, a])` on
/// `x`. The intermediate nodes are left for [`dead_code`] to remove when nothing else reads
/// them. A lone scalar `MulConst`/`AddConst` stays as it is.
pub fn fuse_polynomials(g: &Graph) -> Result<Graph> {
    // view[v] = (base, coeffs): v = coeffs(base) element-wise.
    let mut view: HashMap<ValueId, (ValueId, Vec<f64>)> = HashMap::new();
    let of = |view: &HashMap<ValueId, (ValueId, Vec<f64>)>, v: ValueId| {
        view.get(&v).cloned().unwrap_or((v, vec![0.0, 1.0]))
    };
    let scalar =
        |c: &ndarray::ArrayD<f64>| (c.len() == 1).then(|| c.iter().copied().next().unwrap_or(0.0));
    let mut fused: HashMap<ValueId, (ValueId, Vec<f64>)> = HashMap::new();
    for n in &g.nodes {
        let x = of(&view, n.inputs[0]);
        let composite = view.contains_key(&n.inputs[0]);
        let (v, replace) = match &n.op {
            Op::Poly(c) => (Some((x.0, poly_compose(c, &x.1))), true),
            Op::MulConst(c) => (
                scalar(c).map(|s| (x.0, x.1.iter().map(|a| a * s).collect())),
                composite,
            ),
            Op::AddConst(c) => (
                scalar(c).map(|s| (x.0, poly_add(&x.1, &[s], 1.0))),
                composite,
            ),
            Op::Add | Op::Sub | Op::Mul => {
                let y = of(&view, n.inputs[1]);
                let same = x.0 == y.0 && g.shape(n.inputs[0]) == g.shape(n.inputs[1]);
                let c = match n.op {
                    Op::Add => poly_add(&x.1, &y.1, 1.0),
                    Op::Sub => poly_add(&x.1, &y.1, -1.0),
                    _ => poly_mul(&x.1, &y.1),
                };
                (same.then_some((x.0, c)), true)
            }
            _ => (None, false),
        };
        if let Some((base, c)) = v {
            let c = trim(c);
            if c.len() <= MAX_FUSED_DEGREE + 1 {
                if replace {
                    fused.insert(n.output, (base, c.clone()));
                }
                view.insert(n.output, (base, c));
            }
        }
    }
    rebuild(g, |n| match fused.get(&n.output) {
        Some((base, c)) => Some((Op::Poly(c.clone()), vec![*base])),
        None => Some((n.op.clone(), n.inputs.clone())),
    })
}

/// Removes the nodes whose outputs reach no graph output.
pub fn dead_code(g: &Graph) -> Result<Graph> {
    let mut live = vec![false; g.shapes.len()];
    for v in &g.outputs {
        live[v.0] = true;
    }
    for n in g.nodes.iter().rev() {
        if live[n.output.0] {
            for v in &n.inputs {
                live[v.0] = true;
            }
        }
    }
    // A dead node is dropped (aliased to its first input, which no live node reads through it).
    rebuild(g, |n| {
        live[n.output.0].then(|| (n.op.clone(), n.inputs.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composition_and_products() {
        // (x² ) ∘ (2x + 1) = 4x² + 4x + 1
        assert_eq!(
            poly_compose(&[0.0, 0.0, 1.0], &[1.0, 2.0]),
            vec![1.0, 4.0, 4.0]
        );
        assert_eq!(poly_mul(&[0.0, 1.0], &[0.0, 1.0]), vec![0.0, 0.0, 1.0]);
        assert_eq!(trim(poly_add(&[1.0, 2.0], &[0.0, 2.0], -1.0)), vec![1.0]);
    }
}
