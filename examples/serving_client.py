"""Ask TF Serving for face embeddings, over gRPC (PredictRequest) or REST (JSON).

Export and serve (the export directory holds numbered versions; TF Serving loads the highest):

    python cli/main.py export --model runs/sphere20 --format saved_model --output exports/sphereface
    docker run -p 8500:8500 -p 8501:8501 \\
        -v "$PWD/exports/sphereface:/models/sphereface" -e MODEL_NAME=sphereface tensorflow/serving

Then embed aligned 112x96 crops and print the cosine similarity of the first two:

    python examples/serving_client.py --images aligned/ --protocol grpc   # port 8500
    python examples/serving_client.py --images aligned/ --protocol rest   # port 8501
    python examples/serving_client.py --images aligned/ --dry-run         # show the requests

Signatures: `serving_default` (`images` uint8 [N, H, W, 3] -> `embeddings` float32 [N, D],
L2-normalized) and `serving_flip` (the same with flip fusion).
"""

import argparse
import json
import os
import sys
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_predict_request(images, model_name="sphereface", signature_name="serving_default"):
    """A gRPC `PredictRequest` carrying uint8 `images` [N, H, W, 3] as the `images` input."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.asarray(images, dtype=np.uint8)))
    return request


def build_rest_body(images, signature_name="serving_default"):
    """The JSON body of `POST /v1/models/<name>:predict` (row format: one instance per image)."""
    return json.dumps(
        {"signature_name": signature_name, "instances": np.asarray(images, np.uint8).tolist()}
    )


def predict_grpc(request, host="localhost", port=8500, timeout=30.0):
    """Send `request` to TF Serving's gRPC port; returns the float32 embeddings [N, D]."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout)
    return tf.make_ndarray(response.outputs["embeddings"])


def predict_rest(body, model_name="sphereface", host="localhost", port=8501, timeout=30.0):
    """POST `body` to TF Serving's REST port; returns the float32 embeddings [N, D]."""
    request = urllib.request.Request(
        f"http://{host}:{port}/v1/models/{model_name}:predict",
        data=body.encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return np.asarray(json.load(response)["predictions"], dtype=np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of aligned face crops")
    parser.add_argument("--size", default="112x96", help="crop size HxW (default 112x96)")
    parser.add_argument("--limit", type=int, default=8, help="how many images to send")
    parser.add_argument("--model-name", default="sphereface")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--protocol", choices=["grpc", "rest"], default="grpc")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, help="default 8500 (gRPC) / 8501 (REST)")
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    args = parser.parse_args()

    from keras_sphereface.alignment.warp import parse_size
    from keras_sphereface.export.images import read_aligned_faces

    images = read_aligned_faces(args.images, parse_size(args.size), limit=args.limit)
    request = build_predict_request(images, args.model_name, args.signature)
    body = build_rest_body(images, args.signature)
    if args.dry_run:
        tensor = request.inputs["images"]
        shape = [d.size for d in tensor.tensor_shape.dim]
        print(f"gRPC PredictRequest: model {request.model_spec.name!r}, signature "
              f"{request.model_spec.signature_name!r}, input 'images' {shape} "
              f"({request.ByteSize():,} bytes)")
        print(f"REST body: {len(body):,} bytes, starts {body[:80]}...")
        return
    if args.protocol == "grpc":
        embeddings = predict_grpc(request, args.host, args.port or 8500)
    else:
        embeddings = predict_rest(body, args.model_name, args.host, args.port or 8501)
    print(f"embeddings: {embeddings.shape}, norms {np.linalg.norm(embeddings, axis=1).round(4)}")
    if len(embeddings) >= 2:
        print(f"cosine(image 0, image 1) = {float(embeddings[0] @ embeddings[1]):.4f}")


if __name__ == "__main__":
    main()
