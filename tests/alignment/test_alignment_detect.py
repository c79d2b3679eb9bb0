"""Image reading, the central-face rule, the fallback landmarks and the warp, without MTCNN."""

import cv2
import numpy as np
import pytest

from keras_sphereface.alignment import detect
from keras_sphereface.alignment.warp import align_face, similarity_transform, template_for

TEMPLATE = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
     [62.7299, 92.2041]]
)


def _encode(image, ext):
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def test_read_image_returns_rgb(tmp_path):
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[...] = (10, 20, 30)
    path = tmp_path / "x.png"
    path.write_bytes(_encode(bgr, ".png"))
    image, notes = detect.read_image(str(path))
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert tuple(image[5, 5]) == (30, 20, 10)
    assert notes == []


def test_read_image_converts_grayscale_rgba_and_16_bit(tmp_path):
    gray = np.arange(600, dtype=np.uint8).reshape(20, 30)
    (tmp_path / "gray.png").write_bytes(_encode(gray, ".png"))
    image, notes = detect.read_image(str(tmp_path / "gray.png"))
    assert image.shape == (20, 30, 3) and np.all(image == gray[..., None])
    assert "grayscale" in notes[0]

    bgra = np.zeros((20, 30, 4), np.uint8)
    bgra[...] = (1, 2, 3, 0)
    (tmp_path / "rgba.png").write_bytes(_encode(bgra, ".png"))
    image, notes = detect.read_image(str(tmp_path / "rgba.png"))
    assert image.shape == (20, 30, 3) and tuple(image[0, 0]) == (3, 2, 1)
    assert "alpha" in notes[0]

    deep = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 109)[..., None].repeat(3, axis=2)
    (tmp_path / "deep.png").write_bytes(_encode(deep, ".png"))
    image, notes = detect.read_image(str(tmp_path / "deep.png"))
    assert image.dtype == np.uint8 and np.all(image == (deep // 256).astype(np.uint8))
    assert "16-bit" in notes[0]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda jpeg: b"", "empty"),
        (lambda jpeg: jpeg[: len(jpeg) // 2], "truncated"),
        (lambda jpeg: jpeg[:2] + bytes(range(256)) * 8 + jpeg[-2:], "decode"),
        (lambda jpeg: b"name,value\n1,2\n", "decode"),
    ],
    ids=["zero-byte", "truncated-jpeg", "corrupt-jpeg", "not-an-image"],
)
def test_unreadable_files_raise_with_a_reason(tmp_path, make, reason):
    noise = np.random.default_rng(0).integers(0, 256, (120, 100, 3), dtype=np.uint8)
    path = tmp_path / "bad.jpg"
    path.write_bytes(make(_encode(noise, ".jpg")))
    with pytest.raises(detect.UnreadableImage, match=reason):
        detect.read_image(str(path))


def test_central_face_is_nearest_the_image_centre():
    def face(x1, y1, x2, y2, confidence):
        return detect.Face(np.array([x1, y1, x2, y2], np.float32), np.zeros((5, 2)), confidence)

    faces = [face(0, 0, 40, 40, 0.99), face(80, 90, 120, 130, 0.90), face(150, 150, 200, 200, 0.95)]
    # image 200 wide, 220 high: centre (100, 110); box centres (20, 20), (100, 110), (175, 175)
    assert detect.central_face(faces, (220, 200, 3)) is faces[1]
    assert detect.central_face([], (220, 200, 3)) is None


@pytest.mark.parametrize("shape", [(250, 250, 3), (100, 300, 3), (400, 120)])
def test_fallback_landmarks_are_the_mean_centred_and_scaled(shape):
    height, width = shape[:2]
    expected = np.array([width / 2, height / 2]) + detect.MEAN_LFW_LANDMARKS * min(height, width)
    np.testing.assert_allclose(detect.fallback_landmarks(shape), expected, atol=1e-4)


def test_mean_lfw_landmarks_land_near_the_template():
    """A sanity check of the constant: on a 250x250 frame it is a plausible upright face."""
    points = detect.fallback_landmarks((250, 250))
    assert points[0, 0] < points[2, 0] < points[1, 0]  # nose between the eyes
    assert points[:2, 1].max() < points[2, 1] < points[3:, 1].min()  # eyes, nose, mouth


def _similarity_image_of_template(size, angle, scale, shift):
    """Landmarks that are an exact similarity image of the template: p = s R t + shift."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (template_for(size).astype(np.float64) @ rotation.T) * scale + shift


@pytest.mark.parametrize("size", [(112, 96), (112, 112)])
def test_warp_puts_exact_landmarks_on_the_template_within_a_pixel(size):
    """Draw a dot at each landmark, warp, and find the dots in the crop at the template."""
    points = _similarity_image_of_template(size, np.deg2rad(17.0), 2.3, np.array([60.0, 40.0]))
    image = np.zeros((400, 400, 3), np.uint8)
    for x, y in points:
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 5 * 16, (255, 255, 255), -1,
                   lineType=cv2.LINE_AA, shift=4)
    crop = align_face(image, points, size).astype(np.float64)[..., 0]
    template = template_for(size)
    ys, xs = np.mgrid[: size[0], : size[1]]
    for tx, ty in template:
        window = (np.abs(xs - tx) < 5) & (np.abs(ys - ty) < 5)
        weights = crop * window
        centroid = np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
        assert np.linalg.norm(centroid - [tx, ty]) < 1.0


def test_similarity_transform_is_the_least_squares_optimum():
    """Against an independent least-squares fit of x' = a x - b y + tx, y' = b x + a y + ty."""
    rng = np.random.default_rng(3)
    points = _similarity_image_of_template((112, 96), 0.3, 1.7, np.array([20.0, 35.0]))
    points += rng.normal(scale=2.0, size=points.shape)
    rows, targets = [], []
    for (x, y), (u, v) in zip(points, TEMPLATE):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        targets += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)[0]
    expected = np.array([[a, -b, tx], [b, a, ty]])
    np.testing.assert_allclose(similarity_transform(points), expected, atol=1e-3)
