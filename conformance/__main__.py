import sys

from conformance.launch import main

sys.exit(main())
