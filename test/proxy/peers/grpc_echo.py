"""A gRPC peer for the proxy tests, without generated code: the server answers the unary
method /mesd.test.Echo/Say with "echo:" + the request bytes; the client calls it once.

  grpc_echo.py serve ADDR:PORT [CERT KEY]   # TLS when a certificate is given
  grpc_echo.py call ADDR:PORT MESSAGE
"""
import sys
from concurrent import futures

import grpc


def serve(address, cert=None, key=None):
    def say(request, context):
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "mesd.test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:])
    else:
        call(sys.argv[2], sys.argv[3])
