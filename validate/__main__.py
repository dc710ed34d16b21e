from validate.main import main

main()
