"""A gRPC peer for the proxy tests, without generated code. The server answers the unary
method /mesd.test.Echo/Say with "echo:" + the request bytes, and serves the list_services
part of gRPC server reflection (a bidirectional stream) so that a client can list its
services; the messages of that protocol are written and read by hand below.

  grpc_echo.py serve ADDR:PORT [CERT KEY]   # TLS when a certificate is given
  grpc_echo.py call ADDR:PORT MESSAGE       # prints the echo
  grpc_echo.py list ADDR:PORT               # prints the services, one a line
"""
import sys
from concurrent import futures

import grpc

REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
SERVICES = ["mesd.test.Echo", REFLECTION]


def varint(n):
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field(number, payload):
    """A length-delimited protobuf field."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def read_varint(data, at):
    """The varint at `at`, and where the next field starts."""
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def fields(data):
    """The (number, payload) pairs of the length-delimited fields of a message."""
    at = 0
    while at < len(data):
        key, at = read_varint(data, at)
        length, at = read_varint(data, at)
        yield key >> 3, data[at:at + length]
        at += length


def serve(address, cert=None, key=None):
    def say(request, context):
        return b"echo:" + request

    def reflect(requests, context):
        # ServerReflectionRequest.list_services is field 7; the answer is
        # ServerReflectionResponse.list_services_response (6) of ServiceResponse (1) names (1).
        for request in requests:
            if any(number == 7 for number, _ in fields(request)):
                yield field(6, b"".join(field(1, field(1, name.encode())) for name in SERVICES))

    echo = grpc.method_handlers_generic_handler(
        "mesd.test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    reflection = grpc.method_handlers_generic_handler(
        REFLECTION, {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(reflect)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((echo, reflection))
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(address, creds)
    else:
        server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(address, message):
    with grpc.insecure_channel(address) as channel:
        say = channel.unary_unary("/mesd.test.Echo/Say")
        print(say(message.encode(), timeout=5).decode())


def list_services(address):
    with grpc.insecure_channel(address) as channel:
        info = channel.stream_stream("/" + REFLECTION + "/ServerReflectionInfo")
        for response in info(iter([field(7, b"*")]), timeout=5):
            for number, payload in fields(response):
                if number == 6:
                    for _, service in fields(payload):
                        for _, name in fields(service):
                            print(name.decode())
            break


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:])
    elif sys.argv[1] == "list":
        list_services(sys.argv[2])
    else:
        call(sys.argv[2], sys.argv[3])
