#!/usr/bin/env python3
"""Convert a darknet YOLOv3-tiny or YOLOv4-tiny (cfg + weights) into a static ONNX graph.

Needs only numpy and onnx.  The output is one tensor `output0` of shape
[1, 4 + C, N] (the "yolov8" layout): rows 0..3 are cx, cy, w, h in input
pixels, rows 4.. are per-class scores = sigmoid(objectness) * sigmoid(class).
No NMS in the graph.

Supported darknet layers: convolutional (+batch_normalize, leaky/linear),
maxpool, route (with groups: a channel slice), upsample, yolo (with scale_x_y).  That covers
yolov3-tiny.cfg and yolov4-tiny.cfg.

usage: darknet2onnx.py CFG WEIGHTS OUT.onnx [--size 416] [--opset 13]
"""
import argparse
import numpy as np
import onnx
from onnx import helper, TensorProto, numpy_helper


def parse_cfg(path):
    blocks, cur = [], None
    for line in open(path):
        line = line.split('#')[0].strip()
        if not line:
            continue
        if line.startswith('['):
            cur = {'type': line[1:-1].strip()}
            blocks.append(cur)
        else:
            k, v = line.split('=', 1)
            cur[k.strip()] = v.strip()
    return blocks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('cfg')
    ap.add_argument('weights')
    ap.add_argument('out')
    ap.add_argument('--size', type=int, default=416)
    ap.add_argument('--opset', type=int, default=13)
    a = ap.parse_args()

    blocks = parse_cfg(a.cfg)
    net, layers = blocks[0], blocks[1:]
    S = a.size
    assert int(net.get('channels', 3)) == 3

    raw = open(a.weights, 'rb').read()
    major, minor, rev = np.frombuffer(raw[:12], dtype=np.int32)
    off = 12 + (8 if major * 10 + minor >= 2 else 4)
    w = np.frombuffer(raw[off:], dtype=np.float32)
    wp = 0

    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    out_names, out_ch, out_hw = [], [], []
    x, c, h = 'images', 3, S
    heads = []
    for i, L in enumerate(layers):
        t = L['type']
        if t == 'convolutional':
            n = int(L['filters']); k = int(L['size']); s = int(L['stride'])
            pad = (k - 1) // 2 if int(L.get('pad', 0)) else 0
            bn = int(L.get('batch_normalize', 0))
            if bn:
                b = w[wp:wp + n]; wp += n
                sc = w[wp:wp + n]; wp += n
                mu = w[wp:wp + n]; wp += n
                var = w[wp:wp + n]; wp += n
            else:
                b = w[wp:wp + n]; wp += n
            W = w[wp:wp + n * c * k * k].reshape(n, c, k, k); wp += n * c * k * k
            if bn:
                # darknet normalize_cpu: (x - mean) / (sqrt(var) + .000001f)
                f = sc / (np.sqrt(var) + 1e-6)
                W = W * f[:, None, None, None]
                b = b - mu * f
            wn = const(f'conv{i}_W', W.astype(np.float32))
            bname = const(f'conv{i}_B', b.astype(np.float32))
            y = f'conv{i}'
            nodes.append(helper.make_node('Conv', [x, wn, bname], [y], kernel_shape=[k, k],
                                          strides=[s, s], pads=[pad] * 4, name=y))
            act = L.get('activation', 'linear')
            if act == 'leaky':
                nodes.append(helper.make_node('LeakyRelu', [y], [y + '_act'], alpha=0.1, name=y + '_act'))
                y += '_act'
            else:
                assert act == 'linear', act
            x, c, h = y, n, h // s
        elif t == 'maxpool':
            k = int(L['size']); s = int(L['stride'])
            y = f'pool{i}'
            if s == 1:
                # darknet: output stays the same size, padding k-1 at the end (offset -pad/2 == 0)
                pads = [0, 0, k - 1, k - 1]
            else:
                pads = [0, 0, 0, 0]
            nodes.append(helper.make_node('MaxPool', [x], [y], kernel_shape=[k, k], strides=[s, s],
                                          pads=pads, name=y))
            x, h = y, h // s
        elif t == 'upsample':
            s = int(L['stride'])
            y = f'up{i}'
            sc = const(f'up{i}_scales', np.array([1, 1, s, s], dtype=np.float32))
            nodes.append(helper.make_node('Resize', [x, '', sc], [y], mode='nearest',
                                          coordinate_transformation_mode='asymmetric',
                                          nearest_mode='floor', name=y))
            x, h = y, h * s
        elif t == 'route':
            idx = [int(v) for v in L['layers'].split(',')]
            idx = [j if j >= 0 else i + j for j in idx]
            groups = int(L.get('groups', 1)); gid = int(L.get('group_id', 0))
            if len(idx) == 1 and groups > 1:
                cc = out_ch[idx[0]] // groups
                y = f'route{i}'
                st = const(y + '_s', np.array([gid * cc], dtype=np.int64))
                en = const(y + '_e', np.array([(gid + 1) * cc], dtype=np.int64))
                ax = const(y + '_a', np.array([1], dtype=np.int64))
                nodes.append(helper.make_node('Slice', [out_names[idx[0]], st, en, ax], [y], name=y))
                x, c, h = y, cc, out_hw[idx[0]]
            elif len(idx) == 1:
                x, c, h = out_names[idx[0]], out_ch[idx[0]], out_hw[idx[0]]
            else:
                y = f'route{i}'
                nodes.append(helper.make_node('Concat', [out_names[j] for j in idx], [y], axis=1, name=y))
                x, c, h = y, sum(out_ch[j] for j in idx), out_hw[idx[0]]
        elif t == 'yolo':
            mask = [int(v) for v in L['mask'].split(',')]
            anc = [float(v) for v in L['anchors'].split(',')]
            anc = np.array(anc, dtype=np.float32).reshape(-1, 2)[mask]
            C = int(L['classes'])
            heads.append((x, h, anc, C, i, float(L.get('scale_x_y', 1.0))))
        else:
            raise SystemExit(f'unsupported layer {t}')
        out_names.append(x); out_ch.append(c); out_hw.append(h)

    assert wp == w.size, f'weights not fully consumed: {wp} of {w.size}'

    # decode heads -> [1, 4+C, A*H*W] each, then concat
    dec = []
    for x, H, anc, C, i, sxy in heads:
        A = len(anc); HW = H * H; stride = S / H; p = f'yolo{i}'
        r = const(p + '_shape', np.array([1, A, 5 + C, HW], dtype=np.int64))
        nodes.append(helper.make_node('Reshape', [x, r], [p + '_r'], name=p + '_r'))
        def sl(lo, hi, nm):
            st = const(f'{p}_{nm}_s', np.array([lo], dtype=np.int64))
            en = const(f'{p}_{nm}_e', np.array([hi], dtype=np.int64))
            ax = const(f'{p}_{nm}_a', np.array([2], dtype=np.int64))
            nodes.append(helper.make_node('Slice', [p + '_r', st, en, ax], [f'{p}_{nm}'], name=f'{p}_{nm}'))
            return f'{p}_{nm}'
        xy, wh, ob, cl = sl(0, 2, 'xy'), sl(2, 4, 'wh'), sl(4, 5, 'obj'), sl(5, 5 + C, 'cls')
        gy, gx = np.meshgrid(np.arange(H), np.arange(H), indexing='ij')
        grid = np.stack([gx.reshape(-1), gy.reshape(-1)], 0).astype(np.float32)[None, None]  # [1,1,2,HW]
        g = const(p + '_grid', grid)
        st = const(p + '_stride', np.array(stride, dtype=np.float32))
        an = const(p + '_anchors', anc.reshape(1, A, 2, 1).astype(np.float32))
        nodes += [
            helper.make_node('Sigmoid', [xy], [p + '_xys']),
            helper.make_node('Mul', [p + '_xys', const(p + '_sxy', np.array(sxy, dtype=np.float32))], [p + '_xysm']),
            helper.make_node('Add', [p + '_xysm', const(p + '_sxyb', np.array(-0.5 * (sxy - 1), dtype=np.float32))], [p + '_xysb']),
            helper.make_node('Add', [p + '_xysb', g], [p + '_xyg']),
            helper.make_node('Mul', [p + '_xyg', st], [p + '_xyp']),
            helper.make_node('Exp', [wh], [p + '_whe']),
            helper.make_node('Mul', [p + '_whe', an], [p + '_whp']),
            helper.make_node('Sigmoid', [ob], [p + '_obs']),
            helper.make_node('Sigmoid', [cl], [p + '_clsig']),
            helper.make_node('Mul', [p + '_clsig', p + '_obs'], [p + '_score']),
            helper.make_node('Concat', [p + '_xyp', p + '_whp', p + '_score'], [p + '_cat'], axis=2),
            helper.make_node('Transpose', [p + '_cat'], [p + '_t'], perm=[0, 2, 1, 3]),
        ]
        r2 = const(p + '_shape2', np.array([1, 4 + C, A * HW], dtype=np.int64))
        nodes.append(helper.make_node('Reshape', [p + '_t', r2], [p + '_out'], name=p + '_out'))
        dec.append(p + '_out')
    C = heads[0][3]
    N = sum(len(hd[2]) * hd[1] * hd[1] for hd in heads)
    nodes.append(helper.make_node('Concat', dec, ['output0'], axis=2, name='output0'))

    for nd in nodes:  # every node gets a name (quantisers select nodes by name)
        if not nd.name:
            nd.name = nd.output[0]
    g = helper.make_graph(
        nodes, 'yolov3_tiny',
        [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, S, S])],
        [helper.make_tensor_value_info('output0', TensorProto.FLOAT, [1, 4 + C, N])],
        inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid('', a.opset)],
                          producer_name='darknet2onnx.py')
    m.ir_version = 8
    m.doc_string = ('YOLOv3-tiny (pjreddie darknet weights) converted by darknet2onnx.py; '
                    'input RGB 0..1 NCHW letterboxed; output [1,4+C,N] cx,cy,w,h input px + class scores')
    onnx.checker.check_model(m)
    m = onnx.shape_inference.infer_shapes(m)
    onnx.save(m, a.out)
    print('saved', a.out, 'N =', N, 'C =', C)


if __name__ == '__main__':
    main()
