"""A client on grpc's C core (Python grpcio), with its defaults: health, then
the services through v1alpha reflection. Used by tests/all/daemon.rs."""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

channel = grpc.insecure_channel(f"unix:{sys.argv[1]}")
answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
print("health", health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
stub = reflection_pb2_grpc.ServerReflectionStub(channel)
request = reflection_pb2.ServerReflectionRequest(list_services="")
reply = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
print("services", ",".join(sorted(s.name for s in reply.list_services_response.service)))
