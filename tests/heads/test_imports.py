import subprocess
import sys


def test_tier2_never_imports_the_extractor_and_metrics_imports_nothing_of_natix():
    code = (
        "import sys\n"
        "import natix.metrics\n"
        "assert not [m for m in sys.modules if m.startswith('natix.') and m != 'natix.metrics'], sys.modules\n"
        "import natix.heads.ablate, natix.heads.runs, natix.heads.train\n"
        "assert 'natix.extract' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
