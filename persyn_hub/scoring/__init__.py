"""What a teacher's answer is worth to this student: learnability (in process or served), quality (verifiers, reward models, pool scores) and the combined reward."""
