"""render.camera: the fixed camera layout of docs/INTERFACES.md."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from render.camera import (camera_fitting_view, make_camera, project, project_torch, rotation_matrix,
                           to_camera_frame)


def _reference_project(X, cam):
    """Straight transcription of INTERFACES.md, one point at a time."""
    pitch, yaw, roll, tx, ty, s, d = cam
    R = Rotation.from_euler("ZYX", [roll, yaw, pitch]).as_matrix()  # intrinsic: Rz @ Ry @ Rx
    out = []
    for x in X:
        xc = R @ x
        k = s if d == 0 else s * d / (d - xc[2])
        out.append([k * xc[0] + tx, -k * xc[1] + ty])
    return np.array(out)


@pytest.mark.parametrize("dist", [0.0, 6.0])
def test_project_matches_reference(dist):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    cam = make_camera(0.2, -0.5, 0.1, 60.0, 70.0, 30.0, dist)
    np.testing.assert_allclose(project(X, cam), _reference_project(X, cam.astype(np.float64)), atol=1e-4)


def test_rotation_order_and_orthonormal():
    R = rotation_matrix(0.3, -0.7, 1.1)
    np.testing.assert_allclose(R, Rotation.from_euler("ZYX", [1.1, -0.7, 0.3]).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)


def test_axes_conventions():
    # +y in the model goes up in the image (smaller v); +x goes right; yaw>0 turns the nose (+z) to +x
    cam = make_camera(scale=10.0, tx=50.0, ty=50.0)
    uv = project(np.array([[0, 1.0, 0], [1.0, 0, 0]]), cam)
    assert uv[0, 1] < 50 and uv[1, 0] > 50
    nose = project(np.array([[0, 0, 1.0]]), make_camera(yaw=0.5, scale=10.0))
    assert nose[0, 0] > 0
    # perspective: a closer point (larger z) is magnified
    near = project(np.array([[1.0, 0, 1.0]]), make_camera(scale=10.0, dist=5.0))
    far = project(np.array([[1.0, 0, -1.0]]), make_camera(scale=10.0, dist=5.0))
    assert near[0, 0] > 10.0 > far[0, 0]


def test_batched_and_torch_agree():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4, 15, 3))
    cams = np.stack([make_camera(*rng.uniform(-0.5, 0.5, 3), *rng.uniform(10, 100, 3), d) for d in (0, 4, 0, 9)])
    ref = np.stack([project(X[i], cams[i]) for i in range(4)])
    np.testing.assert_allclose(project(X, cams), ref, atol=1e-9)
    t = project_torch(torch.tensor(X), torch.tensor(cams, dtype=torch.float64))
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-6)


def test_torch_gradients_finite():
    X = torch.randn(10, 3, dtype=torch.float64)
    cam = torch.tensor([0.1, 0.2, 0.0, 5.0, 5.0, 2.0, 8.0], dtype=torch.float64, requires_grad=True)
    project_torch(X, cam).sum().backward()
    assert torch.isfinite(cam.grad).all() and cam.grad.abs().sum() > 0


def test_bad_camera_shape():
    with pytest.raises(ValueError, match="last dimension 7"):
        project(np.zeros((3, 3)), np.zeros(6))


def test_fitting_view_centres():
    X = np.random.default_rng(2).uniform(-1, 1, (50, 3))
    cam = camera_fitting_view(X, (100, 120), fill=0.5)
    uv = project(X, cam)
    np.testing.assert_allclose((uv.min(0) + uv.max(0)) / 2, [60, 50], atol=1e-6)
    assert np.isclose(max(uv.max(0) - uv.min(0)), 50.0)
    assert to_camera_frame(X, cam).shape == X.shape
