from potholes.cli import main

main()
