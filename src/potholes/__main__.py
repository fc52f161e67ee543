from potholes.cli import main

if __name__ == "__main__":  # guard: spawned DataLoader workers re-import this module
    main()
