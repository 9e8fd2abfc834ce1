"""A gRPC peer behind virtual hosting, for the :authority rewrite tests, without generated
code. The server answers only requests whose :authority is the name it is given, as a shared
front end serving several names would; others fail with NOT_FOUND. The unary method
/mesd.test.Authority/Say answers "<request> authority=<authority>", the server-streaming
/mesd.test.Authority/Count answers "<i> authority=<authority>" for i in 1..<request>.

  grpc_authority.py serve ADDR:PORT NAME [CERT KEY]   # TLS when a certificate is given
  grpc_authority.py call ADDR:PORT                     # unary, streaming, unary on one channel

The client prints each answer on its own line, or the failure's status and details.
"""
import sys
from concurrent import futures

import grpc


def authority(context):
    # grpcio hands its handlers no :authority; the call's details hold it (the "host" of
    # gRPC core's grpc_call_details, taken from :authority).
    return context._rpc_event.call_details.host.decode()


def serve(address, name, cert=None, key=None):
    def check(context):
        if authority(context) != name:
            context.abort(grpc.StatusCode.NOT_FOUND, "no virtual host " + authority(context))

    def say(request, context):
        check(context)
        return request + b" authority=" + authority(context).encode()

    def count(request, context):
        check(context)
        for i in range(1, int(request) + 1):
            yield b"%d authority=%s" % (i, authority(context).encode())

    handlers = grpc.method_handlers_generic_handler(
        "mesd.test.Authority", {"Say": grpc.unary_unary_rpc_method_handler(say),
                                "Count": grpc.unary_stream_rpc_method_handler(count)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handlers,))
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(address, creds)
    else:
        server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(address):
    with grpc.insecure_channel(address) as channel:
        say = channel.unary_unary("/mesd.test.Authority/Say")
        count = channel.unary_stream("/mesd.test.Authority/Count")
        try:
            print(say(b"first", timeout=5).decode())
            for answer in count(b"3", timeout=5):
                print(answer.decode())
            print(say(b"again", timeout=5).decode())
        except grpc.RpcError as e:
            print(e.code().name, e.details())
            sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:])
    else:
        call(sys.argv[2])
