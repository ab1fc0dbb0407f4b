"""What ``import bnlab`` pulls in."""

import subprocess
import sys


def test_importing_bnlab_imports_neither_dynamo_nor_triton():
    # Triton reads TRITON_INTERPRET when its language module is first imported: an
    # `import bnlab` that pulled it in (as torch.compiler.disable at import time pulls in
    # torch._dynamo, and it Triton) broke every interpreter-run test after it. Both cost
    # import time too.
    code = ("import sys, bnlab; print(sorted(m for m in ('torch._dynamo', 'triton') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"
