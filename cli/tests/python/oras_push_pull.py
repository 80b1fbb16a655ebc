"""Pushes a file to the cluster registry with oras-py (PyPI's ORAS client) and pulls it back.

    python3 oras_push_pull.py ADDRESS CA_FILE TOKEN FILE REPO:TAG OUTDIR [chunked]

Trusts only the cluster CA (no insecure flag), logs in with the token as the password, and
prints the pulled file's path. Exits non-zero with the client's error otherwise.
"""
import os
import sys

import oras.client


def main():
    address, ca, token, path, target, outdir = sys.argv[1:7]
    chunked = len(sys.argv) > 7 and sys.argv[7] == "chunked"
    client = oras.client.OrasClient(hostname=address, tls_verify=ca)
    client.login(username="someone", password=token, hostname=address, tls_verify=ca)
    ref = f"{address}/{target}"
    # The file's base name is its title in the manifest; pushed from its own directory.
    os.chdir(os.path.dirname(os.path.abspath(path)))
    client.push(target=ref, files=[f"{os.path.basename(path)}:application/wasm"], do_chunked=chunked, chunk_size=65536)
    pulled = client.pull(target=ref, outdir=outdir)
    print("\n".join(pulled))


if __name__ == "__main__":
    main()
